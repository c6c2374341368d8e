"""The efficiency report: parameters, MACs, latency per runtime, memory, Dice (:mod:`.efficiency`), and stock
prediction timed end to end (:mod:`.end_to_end`)."""
