"""Running a plan of jobs elsewhere: the job graph and its ordered script (:mod:`.graph`), Slurm through submitit
(:mod:`.slurm`: options, checks, the queue; :mod:`.job`: what runs inside a job; :mod:`.submission`: submit, rerun,
wait). The benchmark and ``train-folds`` build the graphs; the local executor stays theirs."""
