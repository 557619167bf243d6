"""Benchmarks of the server against OpenSSH scp (`python -m bench`, see README.md "Performance").

- `processes`: our server and a private sshd, as child processes on 127.0.0.1.
- `workloads`: one timed transfer (Python client, C++ client, scp), many
  concurrent clients, register + key exchange latency.
- `report`: medians, the table, the results files; `chart`: the PNG.
- `run`: the command line that ties them together.
"""
