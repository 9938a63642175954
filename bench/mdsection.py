"""Sections of bench/RESULTS.md that a script other than report.py owns ("## Overload",
"## KV cache memory", "## Decode attention", ...): replace one in place, or carry them over when report.py
rewrites the file. Standard library only."""

# Written by their own scripts; report.py keeps them when it rewrites the file.
OWNED = ("## Overload", "## KV cache memory", "## Decode attention")


def find(doc, title):
    """(start, end) of the section titled `title` in doc, or None."""
    start = doc.find(title + "\n")
    if start < 0:
        return None
    nxt = doc.find("\n## ", start + len(title))
    return start, (nxt + 1 if nxt >= 0 else len(doc))


def replace(path, title, text):
    """Puts `text` (starting with `title`) in place of that section of the file, or at its end."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = f.read()
    except FileNotFoundError:
        doc = ""
    span = find(doc, title)
    text = text.rstrip("\n") + "\n"
    if span:
        start, end = span
        doc = doc[:start] + text + ("\n" + doc[end:] if end < len(doc) else "")
    else:
        doc = doc.rstrip("\n") + "\n\n" + text
    with open(path, "w", encoding="utf-8") as f:
        f.write(doc)


def owned_sections(path):
    """The OWNED sections present in the file, in order, as text."""
    try:
        with open(path, encoding="utf-8") as f:
            doc = f.read()
    except FileNotFoundError:
        return []
    out = []
    for title in OWNED:
        span = find(doc, title)
        if span:
            out.append(doc[span[0]:span[1]].rstrip("\n") + "\n")
    return out
