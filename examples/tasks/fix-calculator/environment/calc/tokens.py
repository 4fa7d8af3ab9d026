def tokenize(text):
    """Split '12 + 3*4' into [12, '+', 3, '*', 4]."""
    tokens, number = [], ""
    for ch in text:
        if ch.isdigit():
            number += ch
            continue
        if number:
            tokens.append(int(number))
            number = ""
        if ch in "+-*/":
            tokens.append(ch)
    # BUG: a trailing number is dropped
    return tokens
