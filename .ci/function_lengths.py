#!/usr/bin/env python3
"""Fail when a non-test Rust function is longer than LIMIT lines (signature to closing brace).

Test code is exempt: files under a `tests/` folder and everything after `#[cfg(test)]` in a file
(our test modules sit at the end of their file). Braces in strings, chars and comments are
skipped, which is enough for this codebase's style.
"""
import pathlib
import re
import sys

LIMIT = 80
FN = re.compile(r"^\s*(pub(\([^)]*\))?\s+)?(const\s+)?(async\s+)?(unsafe\s+)?fn\s+(\w+)")


def strip(line, in_block):
    """The line without comments and string/char contents; whether a block comment stays open."""
    out, i = [], 0
    while i < len(line):
        if in_block:
            end = line.find("*/", i)
            if end < 0:
                return "".join(out), True
            i, in_block = end + 2, False
            continue
        c = line[i]
        if line.startswith("//", i):
            break
        if line.startswith("/*", i):
            in_block, i = True, i + 2
            continue
        if c == '"':
            j = i + 1
            while j < len(line) and line[j] != '"':
                j += 2 if line[j] == "\\" else 1
            i = j + 1
            continue
        if c == "'" and re.match(r"'(\\.|[^\\'])'", line[i:]):
            i += len(re.match(r"'(\\.|[^\\'])'", line[i:]).group(0))
            continue
        out.append(c)
        i += 1
    return "".join(out), in_block


def functions(path):
    lines = path.read_text().splitlines()
    stop = next((n for n, l in enumerate(lines) if l.strip() == "#[cfg(test)]"), len(lines))
    in_block, n = False, 0
    while n < stop:
        m = FN.match(lines[n])
        if not m:
            n += 1
            continue
        depth, started, start = 0, False, n
        while n < len(lines):
            code, in_block = strip(lines[n], in_block)
            for ch in code:
                if ch == "{":
                    depth, started = depth + 1, True
                elif ch == "}":
                    depth -= 1
            if not started and code.rstrip().endswith(";"):
                break  # a declaration without a body (trait method)
            if started and depth == 0:
                break
            n += 1
        yield m.group(6), start + 1, n - start + 1
        n += 1


def main():
    root = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else ".")
    long = []
    for path in sorted(root.glob("**/*.rs")):
        parts = path.relative_to(root).parts
        if "target" in parts or "tests" in parts or parts[0].startswith("."):
            continue
        for name, line, length in functions(path):
            if length > LIMIT:
                long.append(f"{path.relative_to(root)}:{line} {name} is {length} lines")
    for entry in long:
        print(entry)
    print(f"{len(long)} non-test functions over {LIMIT} lines")
    return 1 if long else 0


if __name__ == "__main__":
    sys.exit(main())
