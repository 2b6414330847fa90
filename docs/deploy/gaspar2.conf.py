# gaspar2 settings, read with `gaspar2 serve -c FILE`, or from ./gaspar2.conf.py. Every
# name is a setting of `gaspar2 serve --help`; the command line and GASPAR2_CMD_ARGS win
# over this file. `gaspar2 serve --print-config` shows what is in force.
#
# As it is, this file is for gaspar2.service beside it, whose RuntimeDirectory= creates
# /run/gaspar2 for the unix socket. Anywhere else, change that path to a directory you can
# write (or drop the unix: address), and 10123 and 9123 to ports that are free.

# Where to listen (sockets passed by systemd, as gaspar2.socket does, replace these).
bind = ["127.0.0.1:10123", "unix:/run/gaspar2/gaspar2.sock"]
unix_socket_mode = 0o660

workers = 4                 # default: one per CPU
timeout = 30                # clients wait this long at most; a worker stuck longer is replaced
max_requests = 10000        # replace each worker after this many requests...
max_requests_jitter = 1000  # ...give or take, so they do not all restart together
graceful_timeout = 30       # on SIGTERM, finish the requests under way for this long

metrics = "127.0.0.1:9123"  # Prometheus at /metrics, health at /healthz
log_format = "json"         # one JSON object per line
access_logfile = "-"        # one line per request on standard output
