"""Running medtf on clusters: SLURM job scripts, preemption-safe training, multi-worker set-up.

    medtf.hpc.slurm           render templates from slurm/, submit with sbatch, read job state (scontrol)
    medtf.hpc.cluster_config  the user's site settings (modules, venv, account, --gres vs --gpus-per-node)
    medtf.hpc.preemption      PreemptionCallback: BackupAndRestore that saves and stops on SIGUSR1
    medtf.hpc.workers         SlurmClusterResolver for MultiWorkerMirroredStrategy inside srun tasks
    medtf.hpc.local_cluster   a private single-node SLURM (tests, trying templates)

Imports stay lazy: ``import medtf.hpc`` does not load TensorFlow.
"""
