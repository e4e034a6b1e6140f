"""What a person should do with a checkpoint: the key prefixes it carries, and the
``map_location``, prefix fix and ``safe_globals`` list to load it with. Pure functions of what a
reader found and how many GPUs this machine has."""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.devices import cuda_index
from harness.inspect.pickles import runs_code
from harness.inspect.reader import Contents, FileFormat

WRAPPER_PREFIXES = (
    "module.",
    "_orig_mod.",
    "_fsdp_wrapped_module.",
    "_checkpoint_wrapped_module.",
)


@dataclass(frozen=True, kw_only=True)
class PrefixFinding:
    group: str  # where the state_dict is: "" for the file itself, "model" for checkpoint["model"]
    prefix: str
    keys: int  # how many of the group's keys start with it
    total: int
    verdict: str  # strip | ambiguous | not_a_prefix
    message: str

    def to_json(self) -> dict[str, object]:
        return {
            "group": self.group,
            "prefix": self.prefix,
            "keys": self.keys,
            "total": self.total,
            "verdict": self.verdict,
            "message": self.message,
        }


def _groups(contents: Contents) -> dict[str, list[str]]:
    """The file's tensor names as one group, and those under each top-level mapping
    (``checkpoint["model"]``) as another: a state_dict at the top, or one inside a training
    checkpoint."""
    paths = [tensor.path for tensor in contents.tensors]
    groups: dict[str, list[str]] = {"": paths}
    for group in contents.groups:
        inside = [path.removeprefix(f"{group}.") for path in paths if path.startswith(f"{group}.")]
        if inside:
            groups[group] = inside
    return groups


def _strip_leading(key: str, prefix: str) -> str:
    while key.startswith(prefix):
        key = key[len(prefix) :]
    return key


def prefixes(contents: Contents) -> list[PrefixFinding]:
    findings = []
    for group, keys in _groups(contents).items():
        for prefix in WRAPPER_PREFIXES:
            findings += _findings(group, keys, prefix)
    return findings


def _findings(group: str, keys: list[str], prefix: str) -> list[PrefixFinding]:
    """What one group's keys say of one prefix: a wrapper's (strip it), ambiguous, or the
    model's own attribute (do not strip it)."""
    where = "the file's keys" if not group else f"the keys under {group!r}"
    total = len(keys)
    name = prefix[:-1]
    found: list[tuple[int, str, str]] = []  # (keys, verdict, message)
    inner = [key for key in keys if f".{prefix}" in _strip_leading(key, prefix)]
    if inner and prefix == "module.":
        found.append(
            (
                len(inner),
                "ambiguous",
                f"{len(inner)} of {where} hold {prefix!r} inside their name ({inner[0]}): "
                f"key.replace({prefix!r}, '') would break them; strip the leading prefix only",
            )
        )
    count = sum(key.startswith(prefix) for key in keys)
    again = sum(key[len(prefix) :].startswith(prefix) for key in keys)
    if 0 < count < total:
        found.append(
            (
                count,
                "not_a_prefix",
                f"only {count} of {total} of {where} start with {prefix!r}: that is an "
                f"attribute of the model named {name!r}, not a wrapper's prefix; do not strip it",
            )
        )
    elif count and again:
        found.append(
            (
                count,
                "ambiguous",
                f"all {total} of {where} start with {prefix!r}, and {again} start with it twice: "
                f"a wrapper around a model whose own attribute is named {name!r}, or a model "
                "wrapped twice; compare with your model's state_dict() keys before stripping, "
                "and strip one level at most",
            )
        )
    elif count:
        found.append(
            (
                count,
                "strip",
                f"all {total} of {where} start with {prefix!r}: saved from a wrapped model "
                f"(ambiguous only if your own model's first attribute is named {name!r}: "
                "compare with its state_dict() keys)",
            )
        )
    return [
        PrefixFinding(
            group=group, prefix=prefix, keys=keys_, total=total, verdict=verdict, message=message
        )
        for keys_, verdict, message in found
    ]


def recommendations(contents: Contents, gpus: int) -> list[str]:
    """What to load the file with on a machine with ``gpus`` GPUs."""
    advice: list[str] = []
    if contents.defects or contents.format is FileFormat.UNKNOWN:
        return advice
    code = [name for name in contents.globals if runs_code(name)]
    if code:
        advice.append(
            f"do not load this file: it names {', '.join(code)}, which run(s) code or commands "
            "when unpickled; ask its author for a weights-only file (state_dict or safetensors)"
        )
        return advice
    if contents.format is FileFormat.TORCHSCRIPT:
        advice.append("load it with torch.jit.load(path, map_location=...)")
    missing = sorted(
        {
            tensor.location
            for tensor in contents.tensors
            if (index := cuda_index(tensor.location)) is not None and index >= gpus
        }
    )
    if missing:
        target = "'cpu'" if gpus == 0 else "'cuda:0'"
        mapping = ", ".join(f"'{location}': {target}" for location in missing)
        advice.append(
            f"saved on {', '.join(missing)}, which this machine ({gpus} GPU(s)) lacks: "
            f"torch.load(path, map_location={target if gpus == 0 else '{' + mapping + '}'})"
        )
    for finding in prefixes(contents):
        if finding.verdict == "strip":
            target = "state_dict" if not finding.group else f"checkpoint[{finding.group!r}]"
            advice.append(
                "torch.nn.modules.utils.consume_prefix_in_state_dict_if_present("
                f"{target}, {finding.prefix!r}) before load_state_dict"
            )
    if contents.encoding:
        advice.append(
            f"its Python 2 strings are not UTF-8: torch.load(path, encoding={contents.encoding!r}, "
            "...)"
        )
    if contents.unreadable:
        advice.append(
            f"torch.load(weights_only=True) cannot read {contents.unreadable}, whatever "
            "globals are allowed: ask its author to save it again (a zip "
            "torch.save of the state_dict, or safetensors); converting it yourself takes a "
            "weights_only=False load, so do that only in a throwaway sandbox"
        )
    if contents.refused and contents.format.pickled:
        names = ", ".join(contents.refused)
        advice.append(
            f"weights_only=True refuses {names}; if you trust them: with "
            f"torch.serialization.safe_globals([{names}]): torch.load(path, weights_only=True) "
            f"(import each first); never weights_only=False"
        )
    elif contents.refused and contents.format is FileFormat.DCP:
        advice.append(
            f".metadata names {', '.join(contents.refused)}, which DCP never writes; dcp.load "
            "unpickles .metadata with pickle.load, so do not load it"
        )
    return advice
