# --- Environment (from the cluster config: modules, virtual environment, extra set-up lines) ------------------
{{env_setup}}
export PYTHONUNBUFFERED=1  # the log shows progress as it happens (and survives a kill)
cd {{workdir}}
