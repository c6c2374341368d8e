"""Every method on the user's data through stock nnU-Net (:mod:`.benchmark`), and the demo, a preset of it
(:mod:`.demo`, :mod:`.demo_text`, :mod:`.progress`). Their shared parts: the one subprocess runner (:mod:`.runner`),
the steps of a method (:mod:`.pipeline`), the run's state (:mod:`.state`), the methods derived from what is
registered (:mod:`.methods`), the settings and their checks (:mod:`.settings`), rows (:mod:`.rows`), measurement
(:mod:`.measure`), tables (:mod:`.tables`) and the Pareto plot (:mod:`.pareto`)."""
