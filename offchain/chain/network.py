"""A local permissioned network: N geth v1.13.15 Clique signer nodes on loopback, for operators, tests and the demo.

`CliqueNetwork` writes the keys, a London-level Clique genesis and one TOML config (static peers) per node, starts
and stops the nodes, splits and heals them (admin_removePeer / admin_addPeer), and reports each node's head,
peers and sealing. It does not run a production consortium: the signer keys sit unlocked in the node
(`--allow-insecure-unlock`), the admin/debug/miner APIs are served on loopback, and the prefunded dev mnemonic
is public. Everything binds to 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import requests
from eth_account import Account
from eth_keys import keys as eth_keys
from eth_utils import keccak, to_checksum_address

from offchain.chain.devnode import free_port
from offchain.core.errors import ChainError, ToolMissing
from offchain.core.files import write_atomically

GETH_VERSION = "1.13.15"
NETWORK_FILE = "network.json"
PASSWORD = "clearhouse-dev"  # dev network only: the signers' keystores are unlocked at start anyway
DEV_MNEMONIC = "test test test test test test test test test test test junk"  # anvil's; public, dev only
DEV_ACCOUNTS = 10
DEV_BALANCE_WEI = 10**24
SIGNER_BALANCE_WEI = 10**21
DEFAULT_CHAIN_ID = 4242
DEFAULT_HTTP_PORT = 18545  # node i serves HTTP on 18545+i, p2p on 30400+i, authrpc on 18645+i (--fixed-ports)
GAS_LIMIT = 30_000_000
RPC_TIMEOUT_S = 5.0
AES_BLOCK_BYTES = 16
REDIAL_S = 10.0  # wait_ready dials missing peers again this often
HTTP_APIS = "eth,net,web3,txpool,clique,admin,miner,debug"  # admin/debug/miner: loopback dev network only

Progress = Callable[[str], None]


class NetworkError(ChainError):
    """The local Clique network could not be started, reached or changed; `hint` says what to do."""

    code = "network_failed"
    http_status = 503

    def __init__(self, message: str, *, hint: str | None = None, method: str | None = None, node: int | None = None,
                 path: str | None = None, period_s: int | None = None, signers: int | None = None,
                 url: str | None = None, what: str | None = None, workdir: str | None = None,
                 exit_code: int | None = None) -> None:
        super().__init__(message)
        self.hint = hint
        self.exit_code = exit_code
        self.method = method
        self.node = node
        self.path = path
        self.period_s = period_s
        self.signers = signers
        self.url = url
        self.what = what
        self.workdir = workdir


def _quiet(_: str) -> None:
    return None


# --- keys, genesis, config -------------------------------------------------------------------------------------
def geth_binary(root: Path | None = None) -> str:
    """The project's geth (`.tools/bin/geth`, built by bin/setup), else geth on PATH."""
    root = Path(root or os.environ.get("CLEARHOUSE_ROOT") or Path(__file__).resolve().parents[2])
    candidate = root / ".tools" / "bin" / "geth"
    if candidate.exists():
        return str(candidate)
    found = shutil.which("geth")
    if found:
        return found
    raise ToolMissing("geth not found: run bin/setup (it builds geth v1.13.15 into .tools/bin)", binary="geth")


def dev_accounts(count: int = DEV_ACCOUNTS) -> list[tuple[str, bytes]]:
    """(address, private key) of the public dev mnemonic's first `count` accounts (anvil's); dev networks only."""
    Account.enable_unaudited_hdwallet_features()
    out = []
    for i in range(count):
        acct = Account.from_mnemonic(DEV_MNEMONIC, account_path=f"m/44'/60'/0'/0/{i}")
        out.append((acct.address, bytes(acct.key)))
    return out


def clique_extra_data(signers: Iterable[str]) -> str:
    """32 zero bytes, the signer addresses sorted ascending (20 bytes each), 65 zero bytes (no seal yet)."""
    addresses = sorted(bytes.fromhex(a.removeprefix("0x")) for a in signers)
    return "0x" + "00" * 32 + "".join(a.hex() for a in addresses) + "00" * 65


def clique_genesis(chain_id: int, period_s: int, signers: Sequence[str], alloc_wei: dict[str, int],
                   epoch: int = 30_000) -> dict[str, Any]:
    """A Clique genesis at London level: every fork through grayGlacier at block 0, nothing after (no PUSH0)."""
    forks = ("homestead", "eip150", "eip155", "eip158", "byzantium", "constantinople", "petersburg", "istanbul",
             "muirGlacier", "berlin", "london", "arrowGlacier", "grayGlacier")
    config: dict[str, Any] = {"chainId": chain_id, **{f"{name}Block": 0 for name in forks},
                              "clique": {"period": period_s, "epoch": epoch}}
    return {
        "config": config,
        "nonce": "0x0",
        "timestamp": "0x0",
        "extraData": clique_extra_data(signers),
        "gasLimit": hex(GAS_LIMIT),
        "difficulty": "0x1",
        "alloc": {a.removeprefix("0x").lower(): {"balance": hex(w)} for a, w in alloc_wei.items()},
    }


def _derive_key(seed: bytes | None, label: str) -> bytes:
    return keccak(seed + label.encode()) if seed is not None else secrets.token_bytes(32)


def geth_keystore(key: bytes, password: str) -> dict[str, Any]:
    """A V3 keystore of `key` that geth can unlock (pbkdf2 with few rounds: a dev keystore need not resist brute
    force). eth-keyfile writes the AES-CTR IV from an integer, so an IV whose first byte is zero (1 in 256) came out
    as 15 bytes and geth panicked at start ("bad IV length"); it is padded back to 16 bytes, the same 128-bit
    counter, so the ciphertext and MAC stay valid."""
    keystore = Account.encrypt(key, password, kdf="pbkdf2", iterations=1024)
    params = keystore["crypto"]["cipherparams"]
    params["iv"] = params["iv"].rjust(2 * AES_BLOCK_BYTES, "0")
    return keystore


@dataclass(frozen=True)
class NodeSpec:
    """One signer node: its signer address, node key (deterministic enode), ports and data directory."""

    index: int
    signer: str
    nodekey_hex: str
    p2p_port: int
    http_port: int
    authrpc_port: int
    datadir: str

    @property
    def rpc_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def enode(self) -> str:
        public = eth_keys.PrivateKey(bytes.fromhex(self.nodekey_hex)).public_key.to_bytes().hex()
        return f"enode://{public}@127.0.0.1:{self.p2p_port}"


def _static_nodes_toml(peers: Sequence[NodeSpec]) -> str:
    enodes = ", ".join(json.dumps(p.enode) for p in peers)
    return f"[Node.P2P]\nStaticNodes = [{enodes}]\nTrustedNodes = []\n"


# --- JSON-RPC --------------------------------------------------------------------------------------------------
def rpc(url: str, method: str, params: Sequence[Any] = (), timeout_s: float = RPC_TIMEOUT_S) -> Any:
    """One JSON-RPC call; NetworkError on a transport failure or an error answer."""
    try:
        reply = requests.post(url, json={"jsonrpc": "2.0", "id": 1, "method": method, "params": list(params)},
                              timeout=timeout_s).json()
    except (requests.RequestException, ValueError) as exc:
        raise NetworkError(f"{method} on {url} failed: {exc}", url=url, method=method,
                           hint="is the node running? `clearhouse network status`") from exc
    if "error" in reply:
        raise NetworkError(f"{method} on {url}: {reply['error'].get('message')}", url=url, method=method,
                           hint="see the node's geth.log in the network's workdir")
    return reply.get("result")


@dataclass(frozen=True)
class NodeStatus:
    """What `clearhouse network status` prints for one node; `up` False when it does not answer."""

    index: int
    signer: str
    rpc_url: str
    up: bool
    head_number: int | None = None
    head_hash: str | None = None
    peers: int | None = None
    lag: int | None = None
    last_sealed: dict[str, int] = field(default_factory=dict)  # signer -> last block it sealed (recent window)


# --- the network -----------------------------------------------------------------------------------------------
class CliqueNetwork:
    """N Clique signer nodes on loopback; `up()` starts them and writes `<workdir>/network.json`.

    Ports are free ports chosen at creation (or fixed: HTTP 18545+i with `fixed_ports=True`, which is what
    ape-config.yaml's `clearhouse-clique` network points at). Node i keeps its ports across stop/start, so its
    enode in the others' static lists stays valid.
    """

    def __init__(self, workdir: Path, *, signers: int = 4, period_s: int = 1, chain_id: int = DEFAULT_CHAIN_ID,
                 prefund: Sequence[str] = (), fixed_ports: bool = False, seed: bytes | None = None,
                 geth: str | None = None, progress: Progress = _quiet) -> None:
        if signers < 1:
            raise NetworkError("a Clique network needs at least one signer", signers=signers,
                               hint="--signers 4 (three must stay online)")
        if period_s < 1:
            raise NetworkError("period must be at least 1 s (period 0 seals only when there are transactions)",
                               period_s=period_s, hint="--period 1")
        self.workdir = Path(workdir).resolve()
        self.period_s = period_s
        self.chain_id = chain_id
        self.geth = geth or geth_binary()
        self.progress = progress
        self._signer_keys = [_derive_key(seed, f"clearhouse-clique-signer-{i}") for i in range(signers)]
        self.nodes = [self._spec(i, key, fixed_ports) for i, key in enumerate(self._signer_keys)]
        self.prefund = [to_checksum_address(a) for a in prefund]
        self.pids: dict[int, int] = {}
        self._procs: dict[int, subprocess.Popen[bytes]] = {}
        self._stopped_mining: set[int] = set()

    def _spec(self, i: int, key: bytes, fixed_ports: bool) -> NodeSpec:
        ports = ((30400 + i, DEFAULT_HTTP_PORT + i, DEFAULT_HTTP_PORT + 100 + i) if fixed_ports
                 else (free_port(), free_port(), free_port()))
        return NodeSpec(index=i, signer=Account.from_key(key).address,
                        nodekey_hex=keccak(b"clearhouse-clique-nodekey" + key).hex(),
                        p2p_port=ports[0], http_port=ports[1], authrpc_port=ports[2],
                        datadir=str(self.workdir / f"node{i}"))

    # properties ------------------------------------------------------------------------------------------------
    @property
    def signers(self) -> list[str]:
        return [n.signer for n in self.nodes]

    @property
    def rpc_urls(self) -> list[str]:
        return [n.rpc_url for n in self.nodes]

    @property
    def faucet(self) -> tuple[str, bytes]:
        """The dev mnemonic's account 0 (prefunded): (address, private key). Dev networks only."""
        return dev_accounts(1)[0]

    @property
    def network_file(self) -> Path:
        return self.workdir / NETWORK_FILE

    # lifecycle -------------------------------------------------------------------------------------------------
    def up(self, ready_timeout_s: float = 120.0) -> CliqueNetwork:
        """Write keys, genesis and configs, init and start every node, wait for peers and advancing blocks."""
        if self.network_file.exists() and any(_alive(p) for p in _pids_in(self.network_file)):
            raise NetworkError(f"a network is already running from {self.workdir}", workdir=str(self.workdir),
                               hint="`clearhouse network down` first, or pick another --workdir")
        started = time.monotonic()
        self._write_files()
        for node in self.nodes:
            self.start_node(node.index, wait=False)
        self._write_network_file()
        self.wait_ready(timeout_s=ready_timeout_s)
        self.progress(f"network up: {len(self.nodes)} signers, period {self.period_s} s, chain {self.chain_id}, "
                      f"in {time.monotonic() - started:.1f} s")
        return self

    def _write_files(self) -> None:
        for node in self.nodes:  # a previous network's node folders are replaced; nothing else is touched
            datadir = Path(node.datadir)
            if datadir.exists() and not (datadir / "config.toml").exists():
                raise NetworkError(f"{datadir} exists and is not a node folder of a Clearhouse network",
                                   path=str(datadir), hint="pick another --workdir")
            shutil.rmtree(datadir, ignore_errors=True)
        self.workdir.mkdir(parents=True, exist_ok=True)
        alloc = {a: DEV_BALANCE_WEI for a, _ in dev_accounts()}
        alloc.update({a: SIGNER_BALANCE_WEI for a in self.signers})
        alloc.update({a: DEV_BALANCE_WEI for a in self.prefund})
        genesis = clique_genesis(self.chain_id, self.period_s, self.signers, alloc)
        genesis_path = self.workdir / "genesis.json"
        genesis_path.write_text(json.dumps(genesis, indent=2) + "\n")
        (self.workdir / "password.txt").write_text(PASSWORD + "\n")
        self.progress(f"genesis: chain {self.chain_id}, {len(self.nodes)} signers, period {self.period_s} s")
        for node, key in zip(self.nodes, self._signer_keys):
            datadir = Path(node.datadir)
            (datadir / "keystore").mkdir(parents=True, exist_ok=True)
            keystore = geth_keystore(key, PASSWORD)
            (datadir / "keystore" / f"{node.signer.lower()}.json").write_text(json.dumps(keystore))
            others = [p for p in self.nodes if p.index != node.index]
            (datadir / "config.toml").write_text(_static_nodes_toml(others))
            out = subprocess.run([self.geth, "init", "--datadir", node.datadir, str(genesis_path)],
                                 capture_output=True, text=True, timeout=120)
            if out.returncode != 0:
                raise NetworkError(f"geth init failed for node {node.index}: {out.stderr.strip()[-500:]}",
                                   node=node.index, hint="check the genesis in the workdir")
            self.progress(f"node {node.index}: signer {node.signer}, http {node.rpc_url}")

    def _args(self, node: NodeSpec) -> list[str]:
        return [
            self.geth, "--datadir", node.datadir, "--config", str(Path(node.datadir) / "config.toml"),
            "--networkid", str(self.chain_id), "--syncmode", "full", "--cache", "64", "--verbosity", "3",
            "--nodiscover", "--netrestrict", "127.0.0.0/8", "--nat", "none", "--ipcdisable",
            "--port", str(node.p2p_port), "--nodekeyhex", node.nodekey_hex,
            "--authrpc.addr", "127.0.0.1", "--authrpc.port", str(node.authrpc_port),
            "--http", "--http.addr", "127.0.0.1", "--http.port", str(node.http_port), "--http.api", HTTP_APIS,
            "--mine", "--miner.etherbase", node.signer, "--unlock", node.signer,
            "--password", str(self.workdir / "password.txt"), "--allow-insecure-unlock",
        ]

    def start_node(self, index: int, *, wait: bool = True, timeout_s: float = 60.0) -> None:
        """Start node `index` (same ports, keys and data); with `wait`, until it answers and has a peer."""
        node = self.nodes[index]
        if self.is_running(index):
            return
        log = open(Path(node.datadir) / "geth.log", "ab")  # noqa: SIM115 - handed to the child process
        try:
            proc = subprocess.Popen(self._args(node), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    start_new_session=True)
        finally:
            log.close()
        self._procs[index] = proc
        self.pids[index] = proc.pid
        self._stopped_mining.discard(index)
        if self.network_file.exists():
            self._write_network_file()
        if wait:
            self._wait(lambda: self._answers(index) and self.peer_count(index) >= 1,
                       timeout_s, f"node {index} to answer and find a peer")

    def stop_node(self, index: int, timeout_s: float = 30.0) -> None:
        """Stop node `index` (SIGTERM, then SIGKILL after `timeout_s`); its data stays for start_node."""
        pid = self.pids.pop(index, None)
        proc = self._procs.pop(index, None)
        if pid is not None:
            _terminate(pid, proc, self.nodes[index].datadir, timeout_s)
        if self.network_file.exists():
            self._write_network_file()

    def down(self) -> None:
        """Stop every node; the workdir (keys, chain data, logs) stays for inspection."""
        for index in list(self.pids):
            self.stop_node(index)

    def is_running(self, index: int) -> bool:
        pid = self.pids.get(index)
        proc = self._procs.get(index)
        if proc is not None:
            return proc.poll() is None
        return pid is not None and _alive(pid) and _cmdline_has(pid, self.nodes[index].datadir)

    # waiting ---------------------------------------------------------------------------------------------------
    def _wait(self, ready: Callable[[], bool], timeout_s: float, what: str) -> None:
        deadline = time.monotonic() + timeout_s
        last_note = time.monotonic()
        while not ready():
            self._raise_if_exited()
            now = time.monotonic()
            if now > deadline:
                raise NetworkError(f"timed out after {timeout_s:.0f} s waiting for {what}", what=what,
                                   hint=f"see the geth.log files under {self.workdir}")
            if now - last_note > 5.0:
                self.progress(f"still waiting for {what}")
                last_note = now
            time.sleep(0.2)

    def _raise_if_exited(self) -> None:
        """A node this network started has exited on its own (stop_node forgets the process it stops): say which,
        with its last error line, instead of waiting out the timeout."""
        for index, proc in sorted(self._procs.items()):
            code = proc.poll()
            if code is not None:
                log = Path(self.nodes[index].datadir) / "geth.log"
                reason = _last_error_line(log) or f"exit code {code}"
                raise NetworkError(f"node {index} exited: {reason}", node=index, exit_code=code,
                                   hint=f"see {log}")

    def _answers(self, index: int) -> bool:
        try:
            rpc(self.nodes[index].rpc_url, "eth_blockNumber", timeout_s=1.0)
            return True
        except NetworkError:
            return False

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Every running node answers, is connected to every other running node, and blocks advance."""
        running = [i for i in range(len(self.nodes)) if self.is_running(i)]
        self.progress(f"waiting for {len(running)} nodes to connect")
        last_dial = {"at": time.monotonic()}

        def peered() -> bool:
            if all(self._answers(i) and self.peer_count(i) >= len(running) - 1 for i in running):
                return True
            if time.monotonic() - last_dial["at"] >= REDIAL_S:  # geth backs off a static dial that failed once
                last_dial["at"] = time.monotonic()
                self._redial(running)
            return False

        self._wait(peered, timeout_s, "the nodes to answer and peer with each other")
        self.progress("peers connected; waiting for blocks")
        try:
            self.wait_blocks(2, nodes=running, timeout_s=min(timeout_s, 20.0 + 10 * self.period_s))
        except NetworkError:
            # Signers that sealed block 1 before they were peered can split 2-2 on two forks of equal difficulty,
            # which Clique never resolves on its own: keep the fork of the first node (the operator's remedy).
            low = min(self.head(i)[0] for i in running)
            first = self.block_hash(running[0], low)
            keep = [i for i in running if self.block_hash(i, low) == first]
            if len(keep) == len(running):  # one chain, only slow (a loaded machine): keep waiting
                self.wait_blocks(2, nodes=running, timeout_s=timeout_s)
                return
            self.progress(f"nodes sealed apart before peering (forks at block {low}); keeping node {running[0]}'s")
            self.heal(prefer=keep, timeout_s=timeout_s)
            self.wait_blocks(2, nodes=running, timeout_s=timeout_s)

    def _redial(self, running: Sequence[int]) -> None:
        """admin_addPeer every other running node on each node that is short of peers (a node that does not
        answer yet is skipped: the next round tries again)."""
        for a in running:
            try:
                if self.peer_count(a) < len(running) - 1:
                    self._dial(a, running, timeout_s=2.0)
            except NetworkError:
                continue

    def _dial(self, node: int, peers: Sequence[int], timeout_s: float = RPC_TIMEOUT_S) -> None:
        """admin_addPeer each of `peers` (but itself) on `node`: a no-op for one already connected."""
        for b in peers:
            if b != node:
                rpc(self.nodes[node].rpc_url, "admin_addPeer", [self.nodes[b].enode], timeout_s=timeout_s)

    def wait_blocks(self, count: int, *, nodes: Sequence[int] | None = None, timeout_s: float = 60.0) -> int:
        """Wait until every node in `nodes` (default: running ones) is `count` blocks past the highest head now."""
        nodes = list(nodes) if nodes is not None else [i for i in range(len(self.nodes)) if self.is_running(i)]
        target = max(self.head(i)[0] for i in nodes) + count
        self._wait(lambda: all(self.head(i)[0] >= target for i in nodes), timeout_s,
                   f"block {target} on nodes {nodes}")
        return target

    def wait_stalled(self, *, nodes: Sequence[int] | None = None, quiet_periods: int = 4,
                     timeout_s: float = 60.0) -> int:
        """Wait until the head of `nodes` has not moved for `quiet_periods` block periods; returns that head.
        (A stall can only be observed over time: this is the one wait that measures the absence of blocks.)"""
        nodes = list(nodes) if nodes is not None else [i for i in range(len(self.nodes)) if self.is_running(i)]
        seen = {"head": -1, "since": time.monotonic()}

        def quiet() -> bool:
            head = max(self.head(i)[0] for i in nodes)
            if head != seen["head"]:
                seen.update(head=head, since=time.monotonic())
            return time.monotonic() - seen["since"] >= quiet_periods * self.period_s

        self._wait(quiet, timeout_s, f"nodes {nodes} to stop sealing for {quiet_periods} periods")
        return int(seen["head"])

    # sealing by hand -------------------------------------------------------------------------------------------
    def stop_sealing(self, nodes: Iterable[int]) -> None:
        for i in nodes:
            rpc(self.nodes[i].rpc_url, "miner_stop")
            self._stopped_mining.add(i)

    def start_sealing(self, nodes: Iterable[int]) -> None:
        for i in nodes:
            rpc(self.nodes[i].rpc_url, "miner_start")
            self._stopped_mining.discard(i)

    def hold_sealing(self, *, timeout_s: float = 120.0) -> tuple[int, str]:
        """Stop sealing on every running node and return the one head they all hold then.

        A seal in flight when sealing stops still lands, so this first waits for three quiet periods. Two
        out-of-turn seals at one height carry equal difficulty: connected nodes then keep different heads for
        ever, because nobody seals the block that would decide. Such a tie (or a node that missed the last block)
        is settled as heal() settles a fork: the nodes off the chosen head (the highest, then the one node 0
        holds or the lowest index) are rewound to the common ancestor and sync the chosen head; nobody seals.
        """
        running = [i for i in range(len(self.nodes)) if self.is_running(i)]
        self.stop_sealing(running)
        self.wait_stalled(nodes=running, quiet_periods=3, timeout_s=timeout_s)
        heads = {i: self.head(i) for i in running}
        if len(set(heads.values())) > 1:
            top = max(number for number, _hash in heads.values())
            chosen = next(heads[i] for i in running if heads[i][0] == top)
            self.progress(f"sealing held on different heads {heads}; keeping {chosen}")
            self.heal(prefer=[i for i in running if heads[i] == chosen], timeout_s=timeout_s, resume=False)
            self._wait(lambda: len({self.head(i) for i in running}) == 1, timeout_s, "every node on one head")
        return self.head(running[0])

    def restore(self, timeout_s: float = 120.0) -> None:
        """Back to normal: every node running, connected to every other, on one chain, blocks advancing."""
        for node in self.nodes:
            if not self.is_running(node.index):
                self.start_node(node.index, wait=False)
        self._wait(lambda: all(self._answers(n.index) for n in self.nodes), timeout_s, "every node to answer")
        self.start_sealing(self._stopped_mining.copy())
        self.heal(timeout_s=timeout_s)
        self.wait_blocks(1, timeout_s=timeout_s)

    # reading ---------------------------------------------------------------------------------------------------
    def head(self, index: int) -> tuple[int, str]:
        block = rpc(self.nodes[index].rpc_url, "eth_getBlockByNumber", ["latest", False])
        return int(block["number"], 16), block["hash"]

    def block_hash(self, index: int, number: int) -> str | None:
        block = rpc(self.nodes[index].rpc_url, "eth_getBlockByNumber", [hex(number), False])
        return block["hash"] if block else None

    def peer_count(self, index: int) -> int:
        try:
            return int(rpc(self.nodes[index].rpc_url, "net_peerCount", timeout_s=1.0), 16)
        except NetworkError:
            return -1

    def status(self, window: int = 64) -> list[NodeStatus]:
        """Per node: head, peers, lag behind the highest head, and the last block each signer sealed."""
        rows = []
        for node in self.nodes:
            try:
                number, block_hash = self.head(node.index)
                rows.append(NodeStatus(node.index, node.signer, node.rpc_url, True, number, block_hash,
                                       self.peer_count(node.index), None,
                                       self._last_sealed(node.index, number, window)))
            except NetworkError:
                rows.append(NodeStatus(node.index, node.signer, node.rpc_url, False))
        top = max((r.head_number for r in rows if r.head_number is not None), default=None)
        return [NodeStatus(**{**asdict(r), "lag": top - r.head_number}) if r.up and top is not None else r
                for r in rows]

    def _last_sealed(self, index: int, head: int, window: int) -> dict[str, int]:
        url = self.nodes[index].rpc_url
        last: dict[str, int] = {}
        for number in range(head, max(0, head - window), -1):
            signer = to_checksum_address(rpc(url, "clique_getSigner", [hex(number)]))
            last.setdefault(signer, number)
            if len(last) == len(self.nodes):
                break
        return last

    # partitions ------------------------------------------------------------------------------------------------
    def partition(self, groups: Sequence[Sequence[int]]) -> None:
        """Split the running nodes into `groups`: each node drops (admin_removePeer, also from its static list)
        every peer outside its group. Nothing re-dials across groups until `heal()`."""
        side = {i: g for g, members in enumerate(groups) for i in members}
        for a in side:
            for b in side:
                if side[a] != side[b] and self.is_running(a):
                    rpc(self.nodes[a].rpc_url, "admin_removePeer", [self.nodes[b].enode])
        self._wait(lambda: all(self.peer_count(a) <= sum(1 for b in side if side[b] == side[a]) - 1
                               for a in side if self.is_running(a)), 30.0, "the partition to take effect")
        self.progress(f"partitioned: {[list(g) for g in groups]}")

    def heal(self, *, prefer: Sequence[int] | None = None, timeout_s: float = 60.0, resume: bool = True) -> None:
        """Reconnect every running node to every other and wait until they agree on one head.

        Clique keeps two forks of equal total difficulty apart for ever (each side refuses the other's chain and
        neither can seal alone). With `prefer` (the nodes whose fork must win), the other nodes stop sealing, are
        rewound to the common ancestor (debug_setHead), sync the preferred fork from the preferred nodes alone,
        then meet each other, and seal again: the operator's remedy for a stuck fork (with `resume=False` the
        rewound nodes stay stopped). Without it, heal waits for geth's own fork choice.
        """
        running = [i for i in range(len(self.nodes)) if self.is_running(i)]
        losers = [i for i in running if prefer is not None and i not in prefer]
        ancestor = self.common_ancestor(running)
        deadline = time.monotonic() + timeout_s
        if losers:
            winners = [i for i in running if i not in losers]
            self._rewind_and_sync(losers, winners, ancestor, deadline)
        for a in running:
            self._dial(a, running)
        self._wait(lambda: self._converged(running, above=ancestor), max(1.0, deadline - time.monotonic()),
                   "the nodes to agree on one chain")
        if resume:
            self.start_sealing(losers)
        self.progress("healed: every node on one chain")

    def _rewind_and_sync(self, losers: Sequence[int], winners: Sequence[int], ancestor: int,
                         deadline: float) -> None:
        """Rewind `losers` to `ancestor` and let each sync the winners' chain from the winners alone.

        A node syncs from a peer only when the total difficulty it recorded for that peer beats its own, and geth
        updates that record only from the handshake and full-block broadcasts (most blocks reach a peer as a
        hash): a rewound node can stay behind connected peers for ever, so each loser is cut off from everyone
        first and the re-peering is a fresh handshake. Losers meet each other only once they hold the winners'
        head: a loser still holding the difficulty its twin had before the rewind syncs from the twin, gets no
        headers, and drops it as a bad peer, which geth then waits out its dial history (~35 s) to dial again.
        The winners may hold the ancestor itself (a side that could not seal after a split): then there is
        nothing to sync and the losers only re-peer."""
        self.stop_sealing(losers)
        self.partition([list(winners)] + [[i] for i in losers])
        for i in losers:
            rpc(self.nodes[i].rpc_url, "debug_setHead", [hex(ancestor)])
        self.progress(f"rewound nodes {list(losers)} to block {ancestor}")
        target = min(self.head(i)[0] for i in winners)
        target_hash = self.block_hash(winners[0], target)
        for a in losers:
            self._dial(a, winners)
        self._wait(lambda: all(self.block_hash(i, target) == target_hash for i in losers),
                   max(1.0, deadline - time.monotonic()), f"nodes {list(losers)} to sync block {target}")

    def _converged(self, nodes: Sequence[int], *, above: int) -> bool:
        """Every node is connected to the others and all share one block above `above` (the fork point), or all
        hold one head (it may be `above` itself, when nobody can seal the next block)."""
        heads = [self.head(i) for i in nodes]
        low = min(number for number, _hash in heads)
        agree = len(set(heads)) == 1 or (low > above and len({self.block_hash(i, low) for i in nodes}) == 1)
        return agree and all(self.peer_count(i) >= len(nodes) - 1 for i in nodes)

    def common_ancestor(self, nodes: Sequence[int]) -> int:
        """The highest block number at which every node in `nodes` has the same block hash."""
        number = min(self.head(i)[0] for i in nodes)
        while number > 0 and len({self.block_hash(i, number) for i in nodes}) != 1:
            number -= 1
        return number

    # funding (dev) ---------------------------------------------------------------------------------------------
    def fund(self, addresses: Sequence[str], wei: int = 10**20, *, node: int = 0, timeout_s: float = 60.0) -> None:
        """Send `wei` to each address from the dev faucet and wait for the receipts."""
        faucet_address, faucet_key = self.faucet
        url = self.nodes[node].rpc_url
        nonce = int(rpc(url, "eth_getTransactionCount", [faucet_address, "pending"]), 16)
        base_fee = int(rpc(url, "eth_getBlockByNumber", ["latest", False])["baseFeePerGas"], 16)
        hashes = []
        for offset, address in enumerate(addresses):
            tx = {"to": to_checksum_address(address), "value": wei, "gas": 21_000, "nonce": nonce + offset,
                  "chainId": self.chain_id, "maxFeePerGas": 3 * base_fee + 10**9, "maxPriorityFeePerGas": 10**9}
            signed = Account.sign_transaction(tx, faucet_key)
            hashes.append(rpc(url, "eth_sendRawTransaction", ["0x" + bytes(signed.raw_transaction).hex()]))
        self._wait(lambda: all(rpc(url, "eth_getTransactionReceipt", [h]) for h in hashes), timeout_s,
                   f"{len(hashes)} funding transactions")

    # the network file ------------------------------------------------------------------------------------------
    def _write_network_file(self) -> None:
        data = {
            "kind": "clique", "geth_version": GETH_VERSION, "workdir": str(self.workdir),
            "chain_id": self.chain_id, "period_s": self.period_s, "signers": self.signers,
            "rpc_urls": self.rpc_urls, "faucet": self.faucet[0], "dev_mnemonic": DEV_MNEMONIC,
            "nodes": [{**asdict(n), "rpc_url": n.rpc_url, "enode": n.enode, "pid": self.pids.get(n.index)}
                      for n in self.nodes],
        }
        write_atomically(self.network_file, json.dumps(data, indent=2) + "\n")

    @classmethod
    def load(cls, workdir: Path, *, progress: Progress = _quiet) -> CliqueNetwork:
        """The network described by `<workdir>/network.json` (started by another process, or by this one)."""
        path = Path(workdir).resolve() / NETWORK_FILE
        if not path.exists():
            raise NetworkError(f"no network file at {path}", path=str(path), hint="`clearhouse network up` first")
        data = json.loads(path.read_text())
        net = cls.__new__(cls)
        net.workdir = Path(data["workdir"])
        net.period_s = int(data["period_s"])
        net.chain_id = int(data["chain_id"])
        net.geth = geth_binary()
        net.progress = progress
        net._signer_keys = []
        net.prefund = []
        net.nodes = [NodeSpec(**{k: n[k] for k in NodeSpec.__dataclass_fields__}) for n in data["nodes"]]
        net.pids = {n["index"]: n["pid"] for n in data["nodes"] if n.get("pid")}
        net._procs = {}
        net._stopped_mining = set()
        return net


# --- processes -------------------------------------------------------------------------------------------------
def _last_error_line(log: Path) -> str | None:
    """The last panic, Fatal or ERROR line of a geth log, if any."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return None
    marked = [ln.strip() for ln in lines if ln.startswith(("panic:", "Fatal:", "fatal error:", "ERROR"))]
    return marked[-1][:300] if marked else None


def _pids_in(path: Path) -> list[int]:
    try:
        return [n["pid"] for n in json.loads(path.read_text())["nodes"] if n.get("pid")]
    except (OSError, ValueError, KeyError):
        return []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[1][0] != "Z"
    except (OSError, IndexError):
        return True


def _cmdline_has(pid: int, needle: str) -> bool:
    """True when process `pid` runs with `needle` on its command line (never signal a recycled pid)."""
    try:
        return needle.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _terminate(pid: int, proc: subprocess.Popen[bytes] | None, datadir: str, timeout_s: float) -> None:
    if proc is None and not (_alive(pid) and _cmdline_has(pid, datadir)):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            return
        if proc is None and not _alive(pid):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait(timeout=10)
