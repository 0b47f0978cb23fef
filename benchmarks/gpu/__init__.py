"""GPU benchmarks, run by ``scripts/gpu_check.sh`` (docs/gpu_check.md): the deformable-attention
op (``op_bench``) and the early-exit model (``model_bench``). Each writes its tables as JSON
(``--json``) for the check's report and prints them as Markdown; ``--smoke`` runs tiny problems
(on the CPU where there is no GPU) so CI can check the code paths."""
