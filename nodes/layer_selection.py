"""Parse a layer selection such as 'output', 'output.3-5, middle' or 'input.7' into attn1 keys."""
import re

_TOKEN = re.compile(r"^(input|middle|output)(?:\.(\d+)(?:-(\d+))?)?$")


def parse_layers(text, available, node):
    """The (block_name, block_id, depth) keys of `available` that `text` selects, in UNet order."""
    wanted = []
    for token in (t.strip().lower() for t in text.split(",")):
        if not token:
            continue
        match = _TOKEN.match(token)
        if match is None:
            raise ValueError(f"{node}: layer selection '{token}' is not understood. Use 'output', 'middle', "
                             f"'input', or a block range like 'output.3-5', separated by commas.")
        name, first, last = match.group(1), match.group(2), match.group(3)
        low = int(first) if first is not None else 0
        high = int(last) if last is not None else (low if first is not None else 10 ** 6)
        wanted.append((name, low, high))
    keys = [key for key in available if any(key[0] == n and lo <= key[1] <= hi for n, lo, hi in wanted)]
    if not keys:
        have = sorted({f"{k[0]}.{k[1]}" for k in available}, key=lambda s: (s.split(".")[0], int(s.split(".")[1])))
        raise ValueError(f"{node}: layer selection '{text}' matches no self-attention layer of this model. "
                         f"Its self-attention blocks are: {', '.join(have)}.")
    return keys
