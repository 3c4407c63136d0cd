#SBATCH --job-name={{job_name}}
#SBATCH --time={{time}}
#SBATCH --output={{log_dir}}/{{output_pattern}}
#SBATCH --open-mode=append
{{sbatch_options}}
