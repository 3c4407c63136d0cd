# Rendered by `medtf slurm` from a template in medtf's slurm/ folder ({{template}}); to use a template by hand,
# replace every placeholder in double braces (see slurm/README.md). Submit with: sbatch {{script_name}}
