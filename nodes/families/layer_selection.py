"""Parse a layer selection such as 'output', 'output.3-5, middle' (UNet) or 'double.0-18, single'
(Flux, Qwen-Image, SD3) into the family's layer keys."""
import re

# The family's default selection.
AUTO = "auto"
_TOKEN = re.compile(r"^([a-z]+)(?:\.(\d+)(?:-(\d+))?)?$")


def parse_layers(text, available, node):
    """The keys of `available` ((name, id, ...) tuples) that `text` selects, in the model's order."""
    names = list(dict.fromkeys(key[0] for key in available))
    wanted = []
    for token in (t.strip().lower() for t in text.split(",")):
        if not token:
            continue
        match = _TOKEN.match(token)
        if match is None or match.group(1) not in names:
            raise ValueError(f"{node}: layer selection '{token}' is not understood. Use a block name of this model "
                             f"({', '.join(names)}), or a block range like '{names[-1]}.3-5', separated by commas.")
        name, first, last = match.group(1), match.group(2), match.group(3)
        low = int(first) if first is not None else 0
        high = int(last) if last is not None else (low if first is not None else 10 ** 6)
        wanted.append((name, low, high))
    keys = [key for key in available if any(key[0] == n and lo <= key[1] <= hi for n, lo, hi in wanted)]
    if not keys:
        raise ValueError(f"{node}: layer selection '{text}' matches no attention layer of this model. "
                         f"Its attention blocks are: {describe_layers(available)}.")
    return keys


def describe_layers(available):
    """'double.0-18, single.0-37' style summary of layer keys, block ids as ranges."""
    ids = {}
    for key in available:
        ids.setdefault(key[0], []).append(key[1])
    parts = []
    for name, found in ids.items():
        found = sorted(set(found))
        runs, start = [], found[0]
        for prev, cur in zip(found, found[1:] + [None]):
            if cur != prev + 1 if cur is not None else True:
                runs.append(f"{name}.{start}" if start == prev else f"{name}.{start}-{prev}")
                start = cur
        parts.extend(runs)
    return ", ".join(parts)
