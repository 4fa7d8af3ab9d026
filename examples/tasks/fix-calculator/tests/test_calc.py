import subprocess
import unittest


def calc(expr):
    out = subprocess.run(["python3", "-m", "calc", expr], cwd="/app", capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


class TestCalc(unittest.TestCase):
    def test_single_number(self):
        self.assertEqual(calc("42"), 42)

    def test_precedence(self):
        self.assertEqual(calc("2 + 3 * 4"), 14)

    def test_left_to_right(self):
        self.assertEqual(calc("10 - 4 - 3"), 3)

    def test_division(self):
        self.assertEqual(calc("20 / 5 * 2"), 8)

    def test_mixed(self):
        self.assertEqual(calc("1 + 2 * 3 - 8 / 4"), 5)


if __name__ == "__main__":
    unittest.main()
