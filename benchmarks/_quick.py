from benchmarks.workload import *
s=Sizes()
fns=[("floor", gemm_floor_step(s)), ("numpy", library_step("numpy", s)), ("numba", library_step("numba", s)), ("textbook", textbook_step(s))]
for rnd in range(2):
  for name, fn in fns:
    t=median_time(fn, repeats=5)
    print(name, f"{t*1e3:.1f} ms  {s.N/t:.0f} cap/s  {s.flops()/t/1e9:.1f} GFLOP/s")
