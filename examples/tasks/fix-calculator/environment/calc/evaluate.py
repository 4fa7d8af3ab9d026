from calc.tokens import tokenize


def _apply(op, a, b):
    return {"+": a + b, "-": a - b, "*": a * b, "/": a / b}[op]


def evaluate(text):
    tokens = tokenize(text)
    # First pass: * and /
    out = [tokens[0]]
    for op, value in zip(tokens[1::2], tokens[2::2]):
        if op in "*/":
            out[-1] = _apply(op, out[-1], value)
        else:
            out += [op, value]
    # Second pass: + and -, BUG: evaluated right to left
    result = out[-1]
    for op, value in zip(reversed(out[1::2]), reversed(out[0:-1:2])):
        result = _apply(op, value, result)
    return result
