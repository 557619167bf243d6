"""The grading tool: PROTOCOL.md's conformance checks against any server, and their reports.

- `checks/`: the checks, pytest tests named by spec point (`§2 1028`);
- `plugin.py`: the pytest plugin (options, fixtures, verdicts, prerequisites);
- `harness.py`: the submission runner (copies, port.info, process groups);
- `database.py`: a submission's database, read leniently;
- `report.py`: the per-submission report, the summary matrix, the CSV;
- `batch.py` (`python -m grading`): many submission folders at once.

docs/grading.md says how to use it.
"""
