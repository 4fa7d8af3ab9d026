import sys

from calc.evaluate import evaluate

print(evaluate(sys.argv[1]))
