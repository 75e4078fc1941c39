"""The layer in Halide: the algorithm once (`algorithm`), named CPU and CUDA schedules
(`schedules_cpu`, `schedules_gpu`), Halide's autoschedulers (`autoschedule`), an on-disk compile
cache (`cache`) and the registered `halide_*` variants (`variants`)."""
