"""What is computed and how it is scheduled: the layer, its reference, and every registered variant.

Nothing here imports the orchestrator or the workers: data flows describe → plan → dispatch →
execute → record → report, and kernels are the leaves.
"""
