"""Typed settings of every Clearhouse service, read from `CLEARHOUSE_*` environment variables and an optional
TOML or JSON settings file (`--config`); precedence: explicit arguments > environment > file > defaults.

Pydantic lives here because this is an edge; services receive the validated, frozen settings object. Secrets
are `SecretStr` and never logged; this module does not create keys or certificates.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeVar

import structlog
from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    JsonConfigSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from offchain.core.errors import PathError, SettingError

LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]
S = TypeVar("S", bound="BaseServiceSettings")


class BaseServiceSettings(BaseSettings):
    """What every service needs: identity, TLS material, signing key, chain, database and logging."""

    model_config = SettingsConfigDict(env_prefix="CLEARHOUSE_", extra="forbid", frozen=True)

    ROLE_NAME: ClassVar[str] = "service"
    DEFAULT_PORT: ClassVar[int] = 0

    member_id: str = Field(description="This member's id (certificate CN, keccak256 of it is the on-chain memberId).")
    host: str = Field("127.0.0.1", description="Interface the HTTPS server binds to.")
    port: int = Field(-1, ge=-1, le=65535, description="HTTPS port; -1 means the role's default, 0 a free port.")
    metrics_host: str = Field("127.0.0.1", description="Interface of the plain-HTTP /healthz and /metrics listener.")
    metrics_port: int | None = Field(
        None, ge=0, le=65535,
        description="Port of the plain-HTTP /healthz and /metrics listener (no client certificate); unset: off.")
    cert_path: Path | None = Field(None, description="PEM member certificate issued by the Clearhouse CA.")
    key_path: Path | None = Field(None, description="PEM private key (P-256) of the member certificate.")
    ca_path: Path | None = Field(None, description="PEM root certificate of the Clearhouse CA (trust anchor).")
    crl_path: Path | None = Field(None, description="PEM certificate revocation list published by the CA.")
    eth_key_path: Path | None = Field(None, description="File holding the hex secp256k1 signing key.")
    eth_private_key: SecretStr | None = Field(None, description="Hex secp256k1 signing key (instead of a file).")
    key_backend: Literal["file", "pkcs11"] = Field(
        "file", description="Where the secp256k1 signing key lives: a file/setting, or a PKCS#11 token (HSM).")
    pkcs11_module: Path | None = Field(None, description="pkcs11: the vendor's PKCS#11 module (.so).")
    pkcs11_token_label: str | None = Field(None, description="pkcs11: label of the token holding the key.")
    pkcs11_pin: SecretStr | None = Field(None, description="pkcs11: the token's user PIN.")
    pkcs11_key_label: str | None = Field(None, description="pkcs11: label of the key; empty means member_id.")
    rpc_url: str = Field("http://127.0.0.1:8545", description="JSON-RPC endpoint of the chain node.")
    rpc_urls: list[str] = Field(
        default_factory=list,
        description="Several JSON-RPC endpoints of the same chain, used in order with failover; empty: rpc_url.")
    confirmations: int | None = Field(
        None, ge=0,
        description="Blocks from the including block to the head (inclusive) before a transaction is final; unset: "
                    "the chain's policy (anvil 0, Clique max(floor(N/2)+1, 6), Besu QBFT 0).")
    finality_wait_s: float = Field(
        20.0, ge=0,
        description="Device and SP: how long a decision on a chain fact that is included but not yet "
                    "`confirmations` deep (a policy, a serial) waits for the depth before refusing with not_final "
                    "(retry later). Keep it below the peers' HTTP timeout (30 s).")
    chain_id: int | None = Field(None, ge=1, description="If set, the node's chain id must equal it.")
    deployment_path: Path = Field(Path("deployments/local.json"), description="Deployment file of the contract.")
    database_url: str = Field("", description="SQLAlchemy URL; empty means sqlite:///var/<role>.db.")
    log_level: LogLevel = Field("INFO", description="Minimum level of emitted log events.")
    log_json: bool = Field(False, description="Emit JSON lines (production) instead of console output.")

    @model_validator(mode="before")
    @classmethod
    def _role_defaults(cls, data: Any) -> Any:
        if isinstance(data, dict):
            if not data.get("database_url"):
                data["database_url"] = f"sqlite:///var/{cls.ROLE_NAME}.db"
            if data.get("port") in (None, -1, "-1"):
                data["port"] = cls.DEFAULT_PORT
        return data

    @model_validator(mode="after")
    def _one_signing_key(self) -> BaseServiceSettings:
        if self.eth_key_path is not None and self.eth_private_key is not None:
            raise ValueError("set eth_key_path or eth_private_key, not both")
        if self.key_backend == "pkcs11" and (self.pkcs11_module is None or not self.pkcs11_token_label
                                             or self.pkcs11_pin is None):
            raise ValueError("key_backend pkcs11 needs pkcs11_module, pkcs11_token_label and pkcs11_pin")
        return self

    def chain_urls(self) -> list[str]:
        """The chain endpoints in order: `rpc_urls` when given, else the single `rpc_url`."""
        return list(self.rpc_urls) or [self.rpc_url]

    @model_validator(mode="after")
    def _peers_over_tls(self) -> BaseServiceSettings:
        for name in type(self).model_fields:  # bank_url, cc_url, sp_url: every peer speaks mutual TLS only
            value = getattr(self, name)
            if name.endswith("_url") and name not in ("rpc_url", "database_url") and value \
                    and not str(value).startswith("https://"):
                raise ValueError(f"{name} is {value!r}: Clearhouse services speak HTTPS with mutual TLS only; use "
                                 "https://")
        return self

    def eth_signing_key(self) -> Any:
        """The signing key for the chain client and `messages.sign`: the 32 key bytes (`file` backend) or an
        `offchain.trust.keys.Pkcs11Signer` whose key never leaves the token (`pkcs11`)."""
        if self.key_backend == "file":
            return self.eth_private_key_bytes()
        from offchain.trust.keys import Pkcs11Config, open_secp256k1

        if self.pkcs11_module is None or not self.pkcs11_token_label or self.pkcs11_pin is None:
            raise SettingError("key_backend pkcs11 needs pkcs11_module, pkcs11_token_label and pkcs11_pin",
                               field="key_backend")
        config = Pkcs11Config(self.pkcs11_module, self.pkcs11_token_label, self.pkcs11_pin.get_secret_value())
        return open_secp256k1(config, self.pkcs11_key_label or self.member_id)

    def eth_private_key_bytes(self) -> bytes:
        """The 32-byte signing key from `eth_private_key` or `eth_key_path`; ConfigError when missing or bad."""
        if self.eth_private_key is not None:
            text, source = self.eth_private_key.get_secret_value(), "eth_private_key"
        elif self.eth_key_path is not None:
            try:
                text, source = self.eth_key_path.read_text().strip(), str(self.eth_key_path)
            except OSError as exc:
                raise PathError(f"cannot read signing key: {exc}", path=str(self.eth_key_path)) from exc
        else:
            raise SettingError("no signing key configured: set eth_key_path or eth_private_key", field="eth_key_path")
        try:
            key = bytes.fromhex(text.removeprefix("0x"))
        except ValueError as exc:
            raise SettingError("signing key is not hex", source=source) from exc
        if len(key) != 32:
            raise SettingError("signing key must be 32 bytes", source=source, length=len(key))
        return key

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # The file sources read `toml_file`/`json_file` from model_config; `load_settings` sets exactly one.
        return (
            init_settings,
            env_settings,
            TomlConfigSettingsSource(settings_cls),
            JsonConfigSettingsSource(settings_cls),
        )


class ClearingCenterSettings(BaseServiceSettings):
    """The clearing center: issues logs, settles receive logs on chain, asks the bank to pay payees."""

    ROLE_NAME: ClassVar[str] = "clearing_center"
    DEFAULT_PORT: ClassVar[int] = 8441

    bank_url: str = Field("https://127.0.0.1:8443", description="Base URL of the bank service (mutual TLS).")
    settle_batch_max_items: int = Field(64, ge=1, le=1024, description="Receive logs per settle() transaction.")
    settle_gas_budget: int = Field(
        12_000_000, ge=100_000, le=30_000_000,
        description="Estimated gas per settle() transaction (offchain.clearing_center.settlement gas model); below the block limit.",
    )
    settle_interval_s: float = Field(2.0, gt=0, description="Seconds between settlement rounds.")
    transfer_interval_s: float = Field(60.0, gt=0, description="Seconds between transfer request rounds.")
    transfer_threshold_minor: int = Field(
        0, ge=0, description="Request transfers only once a policy's accrued amount exceeds this (minor units)."
    )
    issue_expiry_s: int = Field(30 * 86400, ge=60, description="Lifetime of a new issue log, in seconds.")
    stuck_tx_after_s: float | None = Field(
        120.0, gt=0, description="A settle() transaction still unmined this long is replaced at the same nonce with "
                                 "higher fees (through the outbox); unset: never.")


class ServiceProviderSettings(BaseServiceSettings):
    """The service provider: serves secure containers, receives usage logs, forwards batches to the CC."""

    ROLE_NAME: ClassVar[str] = "service_provider"
    DEFAULT_PORT: ClassVar[int] = 8442

    cc_url: str = Field("https://127.0.0.1:8441", description="Base URL of the clearing center (mutual TLS).")
    forward_batch_max: int = Field(64, ge=1, le=1024, description="Usage batches forwarded per request.")
    forward_interval_s: float = Field(1.0, gt=0, description="Seconds between forwarding rounds.")
    usage_verify_processes: int = Field(
        0, ge=0, le=64, description="Usage signature checks: 0 runs them in a thread pool, N in N worker processes."
    )
    catalog_key: SecretStr | None = Field(
        None, description="Hex 32-byte AES-256-GCM key encrypting content keys at rest in sp_catalog."
    )
    container_dir: Path | None = Field(
        None, description="Where container files are kept, content-addressed by SHA-256 (the catalog rows hold "
                          "only path and hash); empty means a `containers` folder beside a SQLite database, else "
                          "var/service_provider-containers.")
    max_container_bytes: int = Field(
        4 * 1024**3, ge=1, description="Largest container the streamed publish route accepts (bytes).")

    def container_dir_path(self) -> Path:
        """`container_dir`, or the default beside the SP's SQLite database."""
        if self.container_dir is not None:
            return self.container_dir
        if self.database_url.startswith("sqlite:///") and self.database_url != "sqlite:///:memory:":
            return Path(self.database_url.removeprefix("sqlite:///")).parent / "containers"
        return Path("var") / "service_provider-containers"

    def catalog_key_bytes(self) -> bytes:
        """The at-rest key of the catalog; ConfigError when it is missing or not 32 hex bytes."""
        if self.catalog_key is None:
            raise SettingError("no catalog_key configured: content keys cannot be stored", field="catalog_key")
        try:
            key = bytes.fromhex(self.catalog_key.get_secret_value().removeprefix("0x"))
        except ValueError as exc:
            raise SettingError("catalog_key is not hex", field="catalog_key") from exc
        if len(key) != 32:
            raise SettingError("catalog_key must be 32 bytes", field="catalog_key", length=len(key))
        return key


class BankSettings(BaseServiceSettings):
    """The bank (account management institution): keeps the double-entry ledger, pays transfer requests."""

    ROLE_NAME: ClassVar[str] = "bank"
    DEFAULT_PORT: ClassVar[int] = 8443

    cc_management_account: str = Field(
        "cc:management", description="Ledger account the users pay into and transfers are paid from."
    )
    cc_url: str = Field("", description="Base URL of the clearing center, notified of deposits; empty: none.")
    stuck_tx_after_s: float | None = Field(
        30.0, gt=0, description="A transaction the bank waits for, still unmined this long, is replaced at the same "
                                "nonce with higher fees; unset: never.")


class DeviceSettings(BaseServiceSettings):
    """A user device: talks to the SP (content, usage logs) and the CC (issue logs); it serves nothing."""

    ROLE_NAME: ClassVar[str] = "device"

    sp_url: str = Field("https://127.0.0.1:8442", description="Base URL of the service provider.")
    cc_url: str = Field("https://127.0.0.1:8441", description="Base URL of the clearing center.")
    wallet_path: Path = Field(Path("var/device-wallet.db"), description="SQLite wallet of the secure module.")
    keystore_path: Path = Field(Path("var/device-keystore.json"), description="Encrypted keystore of the device.")


def load_settings(cls: type[S], config_path: Path | None = None, **overrides: Any) -> S:
    """Build `cls` from overrides, `CLEARHOUSE_*` env and an optional .toml/.json file; ConfigError on any problem."""
    target: type[S] = cls
    if config_path is not None:
        if not config_path.is_file():
            raise PathError(f"settings file not found: {config_path}", path=str(config_path))
        suffix = config_path.suffix.lower()
        if suffix not in (".toml", ".json"):
            raise PathError("settings file must be .toml or .json", path=str(config_path), suffix=suffix)
        key = "toml_file" if suffix == ".toml" else "json_file"
        config = SettingsConfigDict(**{**cls.model_config, key: config_path})  # type: ignore[typeddict-item]
        target = type(cls.__name__, (cls,), {"model_config": config, "__module__": cls.__module__})
    try:
        return target(**overrides)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PathError(
            f"invalid {cls.__name__}: {problems}", settings=cls.__name__, path=str(config_path or "")
        ) from exc
    except ValueError as exc:  # malformed TOML/JSON raised by the file sources
        raise PathError(f"cannot parse settings file: {exc}", path=str(config_path or "")) from exc


def configure_logging(settings: BaseServiceSettings) -> Any:
    """Route structlog (and stdlib logging) to stderr as JSON lines or console text; returns a bound logger."""
    level = logging.getLevelName(settings.log_level)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(message)s", force=True)
    renderer: Any = structlog.processors.JSONRenderer() if settings.log_json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(level),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=False,
    )
    return structlog.get_logger().bind(member_id=settings.member_id, role=settings.ROLE_NAME)
