"""The benchmark harness behind ``twotower bench``: serving, scale and training suites.

Speed is measured as latency percentiles with warm-up and interleaved
repetitions, on a fixed and recorded number of threads; every result carries
the machine and library versions it was measured with.
"""
