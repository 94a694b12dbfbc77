"""What the tests share and no test holds: a fault-injecting proxy (faultproxy), local copies of the hub
datasets' shape (hubdata), small SFT sets (sftdata), and running Snakemake on a copy of this checkout (workflow)."""
