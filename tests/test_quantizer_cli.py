"""`mvq quantizers`."""

from mvq.cli import main
from mvq.quantize.registry import FAMILIES


def test_quantizers_lists_each_family_on_one_line_with_its_bits(capsys):
    assert main(["quantizers"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[0] for line in lines] == list(FAMILIES)
    for line, fam in zip(lines, FAMILIES.values()):
        assert f"bits/token {fam.bits}" in line and fam.summary in line
