from offchain.operator.sim.command import sim

sim()
