import json

import torch

import oneformore
from oneformore import _extension
from oneformore.cli.main import main


def test_info_reports_versions_and_backends(capsys):
    assert main(["info", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["oneformore"] == oneformore.__version__
    assert info["torch"] == torch.__version__
    assert info["backends"]["cpu"] is True
    # the CPU kernels' SIMD level, which this CPU must run (the import checks it)
    assert info["backends"]["cpu_simd"] in ("avx512", "avx2", "default")
    assert _extension._C.cpu_simd_supported()
    assert info["backends"]["cuda"] == _extension.cuda_compiled()
    if info["backends"]["cuda"]:
        assert info["backends"]["cuda_arch_list"]


def test_every_op_has_a_cpu_kernel():
    b = _extension.backends()
    assert b["missing_cpu"] == []
    if b["cuda"]:
        assert b["missing_cuda"] == []
