"""The YAML config, read once into frozen typed models.

Every mistake becomes one line naming the key path and what is allowed; ``load_config`` raises a
single ``ConfigError`` holding all of them, so a user fixes the file in one pass.
"""

from __future__ import annotations

import ipaddress
import os
import re
import string
from pathlib import Path
from typing import Annotated, Any, Literal, Optional, Sequence, Union

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from facesortd.errors import ConfigError

DEFAULT_CONFIG_NAME = "facesortd.yaml"
LAYOUT_FIELDS = ("identity", "name", "ext", "year", "month", "day", "inbox")


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)


class InboxConfig(_Model):
    path: Path
    mode: Literal["detect", "aligned"] = "detect"
    recursive: bool = True


class WatchConfig(_Model):
    settle_ms: int = Field(1000, ge=0)
    rescan_interval_s: float = Field(300, ge=0)
    polling: bool = False
    #: photos taken for analysis (HEIC/HEIF through pillow-heif, AVIF where Pillow reads it)
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff",
                                   ".heic", ".heif", ".avif")
    ignore: tuple[str, ...] = ("*.part", "*.tmp", "*.crdownload", ".*")
    #: move (into placement.other_dir) | leave (in the inbox, logged once): files that are
    #: neither photos nor a photo's companions
    other_files: Literal["move", "leave"] = "move"
    #: files sharing a photo's stem (``stem.*``, same folder) that travel with it; a RAW file
    #: without a JPEG/HEIC twin is analysed on its own embedded preview
    companions: tuple[str, ...] = (".xmp", ".aae", ".mov", ".json", ".thm", ".cr2", ".cr3", ".nef",
                                   ".arw", ".dng", ".raf", ".orf", ".rw2")

    @field_validator("extensions", "companions")
    @classmethod
    def _dotted_lowercase(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for ext in value:
            ext = ext.strip().lower()
            if not ext or ext == ".":
                raise ValueError("an extension may not be empty (write them like .jpg)")
            ext = ext if ext.startswith(".") else "." + ext
            if "/" in ext or "\\" in ext or "*" in ext:
                raise ValueError(f"{ext!r} is not an extension (write them like .xmp)")
            out.append(ext)
        return tuple(out)

    @model_validator(mode="after")
    def _photo_or_companion(self) -> "WatchConfig":
        both = sorted(set(self.extensions) & set(self.companions))
        if both:
            raise ValueError(
                f"{', '.join(both)} in both watch.extensions and watch.companions: a file is a photo "
                "or a photo's companion; keep RAW extensions in companions (a RAW without a twin is "
                "still analysed on its preview) or list them only in extensions (every RAW alone)")
        return self


class EmbedderConfig(_Model):
    #: auto: the store's model, else facenet when its weights are here or download, else dlib
    name: Literal["auto", "facenet", "dlib"] = "auto"
    weights: Optional[Path] = None
    device: str = "auto"
    batch_size: int = Field(64, ge=1, le=4096)
    max_wait_ms: int = Field(200, ge=0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    #: auto: worker processes on an accelerator, threads on a CPU; 0: threads; N: N processes
    decode_processes: Union[Literal["auto"], int] = "auto"
    #: facenet and dlib's torch runtime on CUDA: replay the whole embedding step as one captured
    #: CUDA graph (false: eager)
    cuda_graphs: bool = True
    #: facenet on CPU: BatchNorm and residual scales folded into the convolutions (same fp32
    #: results within float rounding, fewer passes); false: the model exactly as facenet-pytorch builds it
    fold: bool = True
    #: dlib: ``torch`` runs dlib's ResNet (weights read from face_recognition_models' .dat file)
    #: through torch, batched, on CPU or CUDA; ``dlib`` runs dlib's own compute_face_descriptor
    #: (the reference implementation: one face at a time, CPU only). Same vectors, same model id.
    dlib_runtime: Literal["torch", "dlib"] = "torch"

    @field_validator("decode_processes", mode="before")
    @classmethod
    def _decode_processes(cls, value: Any) -> Any:
        if value != "auto" and (isinstance(value, bool) or not isinstance(value, int)
                                or not 0 <= value <= 64):
            raise ValueError(f"must be 'auto' or a number of processes from 0 to 64, not {value!r}")
        return value

    @field_validator("device")
    @classmethod
    def _device(cls, value: str) -> str:
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"must be auto, cpu, cuda or cuda:N, not {value!r}")
        return value


class DetectorConfig(_Model):
    min_face_px: int = Field(40, ge=1)
    min_probability: float = Field(0.95, ge=0.0, le=1.0)
    max_side_px: int = Field(1024, ge=160)
    #: Faces are cut from a copy at most this large (``auto``: twice ``max_side_px``).
    crop_max_side_px: Union[Literal["auto"], int] = "auto"

    @field_validator("crop_max_side_px", mode="before")
    @classmethod
    def _crop_side(cls, value: Any, info: Any) -> Union[str, int]:
        if value == "auto":
            return value
        least = info.data.get("max_side_px", 160)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"must be 'auto' or a number of pixels no smaller than "
                             f"detector.max_side_px ({least}), not {value!r}")
        return value

    def crop_side(self) -> int:
        """The longest side of the copy faces are cut from."""
        return 2 * self.max_side_px if self.crop_max_side_px == "auto" else self.crop_max_side_px


class ClusteringConfig(_Model):
    eps: Union[Literal["auto"], float] = "auto"
    min_samples: int = Field(2, ge=1)
    recluster_interval_s: float = Field(3600, ge=0)
    recluster_after_faces: int = Field(500, ge=0)

    @field_validator("eps", mode="before")
    @classmethod
    def _eps(cls, value: Any) -> Union[str, float]:
        if value == "auto":
            return value
        try:
            eps = float(value)
        except (TypeError, ValueError):
            eps = -1.0
        if isinstance(value, bool) or not 0.0 < eps < 4.0:
            raise ValueError(f"must be 'auto' or a distance between 0 and 4, not {value!r}")
        return eps


class PlacementConfig(_Model):
    action: Literal["move", "copy", "hardlink", "symlink"] = "move"
    layout: str = "{identity}/{name}{ext}"
    unknown_dir: str = "_unsorted"
    noface_dir: str = "_noface"
    quarantine_dir: str = "_quarantine"
    multi_face: Literal["largest", "all", "group"] = "largest"
    group_dir: str = "_groups"
    duplicates_dir: str = "_duplicates"
    on_conflict: Literal["rename_new", "skip_identical"] = "rename_new"
    other_dir: str = "_other"        # with watch.other_files: move (path inside the inbox kept)
    xmp_sidecars: bool = False       # an XMP sidecar with the named people's face regions (xmp.py)
    xmp_sidecar_name: str = "{name}{ext}.xmp"   # beside the photo; {name}, {ext}: its placed name

    @property
    def special_dirs(self) -> tuple[str, ...]:
        """The library's own folders, never a person's (``layout.identity_folders`` avoids them)."""
        return (self.unknown_dir, self.noface_dir, self.quarantine_dir, self.group_dir,
                self.duplicates_dir, self.other_dir)

    @field_validator("xmp_sidecar_name")
    @classmethod
    def _xmp_sidecar_name(cls, value: str) -> str:
        _template_fields(value, ("name", "ext"), " (the photo's name as placed)")
        if not value.startswith("{name}") or not value.lower().endswith(".xmp") \
                or "/" in value or "\\" in value:
            raise ValueError("must be one file name that starts with {name} and ends with .xmp "
                             f"(the sidecar sits beside its photo and shares its stem), not {value!r}")
        return value

    @field_validator("layout")
    @classmethod
    def _layout(cls, value: str) -> str:
        fields = _template_fields(value, LAYOUT_FIELDS)
        if "name" not in fields:
            raise ValueError("must contain {name} so that two photos never get the same path")
        if value.startswith("/") or ".." in Path(value).parts:
            raise ValueError("must be a relative path inside the library (no leading / or ..)")
        return value

    @field_validator("unknown_dir", "noface_dir", "quarantine_dir", "group_dir", "duplicates_dir",
                     "other_dir")
    @classmethod
    def _plain_dir(cls, value: str) -> str:
        if not value or "/" in value or "\\" in value or value in (".", ".."):
            raise ValueError(f"must be one folder name inside the library, not {value!r}")
        return value


def _template_fields(value: str, allowed: Sequence[str], why: str = "") -> list[str]:
    """The ``{field}`` names of a template (``placement.layout``, ``xmp_sidecar_name``); a broken
    template or a field not in ``allowed`` is a ValueError that lists the allowed ones."""
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(value) if f is not None]
    except ValueError as exc:
        raise ValueError(f"is not a valid template ({exc})") from None
    unknown = sorted({f for f in fields if f not in allowed})
    if unknown:
        raise ValueError(f"unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; "
                         f"allowed: {', '.join('{' + f + '}' for f in allowed)}{why}")
    return fields


def _host_entry(value: str) -> str:
    """One ``web.allowed_hosts`` entry, normalised (``Photos.LAN.`` -> ``photos.lan``)."""
    example = "e.g. photos.example.lan, or photos.example.lan:8443 for that port only"
    if "*" in value:
        raise ValueError(f"list each name ({example}); a wildcard would let any web site's "
                         f"pages use the review page (DNS rebinding) (got {value!r})")
    if "/" in value:
        raise ValueError(f"a host name with an optional :port, not a URL or path ({example}) "
                         f"(got {value!r})")
    try:
        name, port = split_host(value)
    except ValueError as exc:
        raise ValueError(f"{exc} ({example}) (got {value!r})") from None
    return name if port is None else f"{name}:{port}"


def _proxy_entry(value: str) -> str:
    """One ``web.trusted_proxies`` entry: an address or a network, normalised."""
    try:
        return str(ipaddress.ip_network(value.strip(), strict=False))
    except ValueError:
        raise ValueError("must be an IP address or network (e.g. 127.0.0.1, 10.0.0.0/8, ::1): "
                         f"the proxy's address as this server sees it (got {value!r})") from None


class WebConfig(_Model):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535)
    token: Optional[str] = None
    #: Host names the page answers besides the loopback names and ``host`` (DNS rebinding).
    allowed_hosts: tuple[Annotated[str, AfterValidator(_host_entry)], ...] = ()
    #: Addresses whose X-Forwarded-For/-Proto/-Host headers are believed (a reverse proxy).
    trusted_proxies: tuple[Annotated[str, AfterValidator(_proxy_entry)], ...] = ()

    @property
    def is_loopback(self) -> bool:
        return is_loopback_host(self.host)

    @property
    def is_wildcard(self) -> bool:
        """Bound to every address (``0.0.0.0``, ``::``): reachable on loopback too."""
        return self.host in ("", "0.0.0.0", "::")


class ExportConfig(_Model):
    #: where the review page's "Export selected" writes, one dated folder per export
    root: Path = Path("./exports")


class Config(_Model):
    """The whole resolved config; ``source`` is the file it was read from (None for defaults)."""

    state_dir: Path = Path("./state")
    library: Path = Path("./library")
    inboxes: tuple[InboxConfig, ...] = (InboxConfig(path=Path("./inbox")),)
    watch: WatchConfig = WatchConfig()
    embedder: EmbedderConfig = EmbedderConfig()
    detector: DetectorConfig = DetectorConfig()
    clustering: ClusteringConfig = ClusteringConfig()
    placement: PlacementConfig = PlacementConfig()
    web: WebConfig = WebConfig()
    export: ExportConfig = ExportConfig()
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    source: Optional[Path] = Field(None, exclude=True)

    @field_validator("inboxes")
    @classmethod
    def _at_least_one(cls, value: tuple[InboxConfig, ...]) -> tuple[InboxConfig, ...]:
        if not value:
            raise ValueError("needs at least one inbox (a list of {path: ..., mode: detect})")
        return value

    def to_yaml(self) -> str:
        """The resolved config (absolute paths, every default filled in) as YAML."""
        data = self.model_dump(mode="json", exclude={"source"})
        return yaml.safe_dump(data, sort_keys=False)


def is_loopback_host(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


_HOST_LABEL = r"[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?"
_HOST_NAME = re.compile(rf"{_HOST_LABEL}(?:\.{_HOST_LABEL})*")


def split_host(value: str) -> tuple[str, Optional[int]]:
    """``name[:port]`` (a Host header, a ``web.allowed_hosts`` entry) as ``(name, port)``: the name
    in lower case without a trailing dot, an IPv6 address compressed and in brackets, the port
    None when absent. ValueError says what is wrong."""
    text = value.strip().lower()
    port_text: Optional[str] = None
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError("an IPv6 address needs its closing ']'")
        try:
            name = f"[{ipaddress.IPv6Address(text[1:end]).compressed}]"
        except ValueError:
            raise ValueError(f"{text[1:end]!r} is not an IPv6 address") from None
        rest = text[end + 1:]
        if rest and not rest.startswith(":"):
            raise ValueError("only ':port' may follow an IPv6 address in brackets")
        port_text = rest[1:] if rest else None
    elif text.count(":") > 1:
        raise ValueError("write an IPv6 address in brackets, as in [::1] or [::1]:8765")
    else:
        name, colon, rest = text.partition(":")
        port_text = rest if colon else None
        name = name[:-1] if name.endswith(".") else name
        if not _HOST_NAME.fullmatch(name):
            raise ValueError("not a host name (letters, digits, '-', '.') or an IP address")
    if port_text is None:
        return name, None
    if not re.fullmatch(r"[0-9]{1,5}", port_text) or not 1 <= int(port_text) <= 65535:
        raise ValueError("the port must be a number from 1 to 65535")
    return name, int(port_text)


def default_config_path() -> Path:
    """``$FACESORTD_CONFIG``, else ``./facesortd.yaml``."""
    return Path(os.environ.get("FACESORTD_CONFIG") or DEFAULT_CONFIG_NAME)


def load_config(path: Optional[Union[str, Path]] = None) -> Config:
    """Read, validate and resolve a config file; raise ConfigError listing every problem."""
    path = Path(path) if path is not None else default_config_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(path, [
            "file not found: pass --config FILE, set FACESORTD_CONFIG, or copy "
            "config/facesortd.yaml to ./facesortd.yaml"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, [f"cannot read the file: {exc}"]) from None
    return parse_config(text, path)


def parse_config(text: str, path: Union[str, Path]) -> Config:
    """Validate YAML text as if read from ``path`` (relative paths resolve against its folder)."""
    path = Path(path).absolute()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        raise ConfigError(path, [f"{where}not valid YAML ({getattr(exc, 'problem', exc)})"]) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(path, ["the file must be a mapping of keys (state_dir:, library:, inboxes: ...)"])
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, [_describe(err) for err in exc.errors()]) from None
    config = _resolve_paths(config, path.parent).model_copy(update={"source": path})
    problems = _check_combinations(config)
    if problems:
        raise ConfigError(path, problems)
    return config


def _describe(err: dict[str, Any]) -> str:
    loc = ".".join(str(p) for p in err["loc"] if not str(p).startswith("function-after"))
    loc = re.sub(r"\.(\d+)(?=\.|$)", r"[\1]", loc) or "(top level)"
    kind = err["type"]
    if kind == "extra_forbidden":
        parent = err["loc"][:-1]
        allowed = _allowed_keys(parent)
        return f"{loc}: unknown key; allowed keys here: {', '.join(allowed)}"
    msg = err["msg"].removeprefix("Value error, ")
    if kind != "value_error" and "input" in err and not isinstance(err["input"], (dict, list)):
        msg += f" (got {err['input']!r})"
    return f"{loc}: {msg}"


def _allowed_keys(parent: tuple) -> list[str]:
    model: Any = Config
    for part in parent:
        if isinstance(part, int):
            continue
        field = model.model_fields.get(str(part))
        if field is None:
            break
        annotation = field.annotation
        inner = getattr(annotation, "__args__", None)
        if inner and isinstance(inner[0], type) and issubclass(inner[0], BaseModel):
            model = inner[0]
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            model = annotation
    return [k for k in model.model_fields if k != "source"]


def _resolve(base: Path, p: Path) -> Path:
    p = p.expanduser()
    return Path(os.path.normpath(p if p.is_absolute() else base / p))


def _resolve_paths(config: Config, base: Path) -> Config:
    embedder = config.embedder
    if embedder.weights is not None:
        embedder = embedder.model_copy(update={"weights": _resolve(base, embedder.weights)})
    return config.model_copy(update={
        "state_dir": _resolve(base, config.state_dir),
        "library": _resolve(base, config.library),
        "inboxes": tuple(i.model_copy(update={"path": _resolve(base, i.path)}) for i in config.inboxes),
        "embedder": embedder,
        "export": config.export.model_copy(update={"root": _resolve(base, config.export.root)}),
    })


def _inside(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def _check_combinations(config: Config) -> list[str]:
    """Problems no single key shows: folders inside each other, a public web page without a token."""
    problems = []
    seen: dict[Path, int] = {}
    for i, inbox in enumerate(config.inboxes):
        key = f"inboxes[{i}].path"
        if inbox.path in seen:
            problems.append(f"{key}: {inbox.path} is listed twice (also inboxes[{seen[inbox.path]}]); "
                            "list each folder once")
            continue
        for j, other in seen.items():
            if _inside(inbox.path, j) or _inside(j, inbox.path):
                problems.append(f"{key}: {inbox.path} overlaps inboxes[{other}] ({j}); "
                                "inboxes must not contain each other")
        seen[inbox.path] = i
        for name, folder in (("library", config.library), ("state_dir", config.state_dir)):
            if _inside(inbox.path, folder) or _inside(folder, inbox.path):
                problems.append(f"{key}: {inbox.path} overlaps {name} ({folder}); "
                                f"an inbox must be a folder of its own, outside {name}")
    for name, folder in [("library", config.library), ("state_dir", config.state_dir)] + \
            [(f"inboxes[{i}].path", inbox.path) for i, inbox in enumerate(config.inboxes)]:
        if _inside(config.export.root, folder) or _inside(folder, config.export.root):
            problems.append(f"export.root: {config.export.root} overlaps {name} ({folder}); "
                            "exports go to a folder of their own (the daemon would sort them)")
    if _inside(config.state_dir, config.library) or _inside(config.library, config.state_dir):
        problems.append(f"state_dir: {config.state_dir} overlaps library ({config.library}); "
                        "keep the state folder outside the sorted library")
    if not config.web.is_loopback and config.web.enabled and not config.web.token:
        problems.append(f"web.token: required when web.host is not loopback ({config.web.host}); "
                        "set a long random token, or bind web.host to 127.0.0.1")
    dirs = [config.placement.unknown_dir, config.placement.noface_dir, config.placement.quarantine_dir,
            config.placement.group_dir, config.placement.duplicates_dir]
    if len(set(dirs)) != len(dirs):
        problems.append("placement: unknown_dir, noface_dir, quarantine_dir, group_dir and "
                        "duplicates_dir must be five different folder names")
    return problems
