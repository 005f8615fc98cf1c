"""The methods: noise schedules, the networks, DDPM training and sampling, DIP fitting, TDPM-DIP and the
stopping rules. Nothing here imports the studies, the book or the running machinery."""
