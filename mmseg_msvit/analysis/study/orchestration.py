"""The evidence study's orchestration (``tools/analysis_tools/msvit_study.py``): the resumable
results file."""
from typing import List


def read_results(path: str) -> List[dict]:
    """The records of a study's ``results.jsonl`` (one JSON object per line).

    A last line cut short by an interrupted write (no newline, not valid JSON) is dropped and the
    file truncated back to its last complete line, with a note, so that a re-run can append
    again; any other unreadable line is an error naming the file and the line.
    """
    import json
    with open(path, 'rb') as f:
        data = f.read()
    records = []
    if data and not data.endswith(b'\n'):
        try:  # a whole record whose newline was not written: complete the line
            json.loads(data.rsplit(b'\n', 1)[-1])
            with open(path, 'ab') as f:
                f.write(b'\n')
            data += b'\n'
        except ValueError:
            pass  # a torn record: dropped below
    lines = data.split(b'\n')
    complete = data.endswith(b'\n') or not data
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            record = json.loads(raw)
        except ValueError as err:
            if number == len(lines) and not complete:  # the torn tail of an interrupted write
                keep = len(data) - len(raw)
                with open(path, 'r+b') as f:
                    f.truncate(keep)
                print(f'[study] {path}: dropped an incomplete last line (an interrupted write; '
                      f'{len(raw)} bytes); its step runs again', flush=True)
                break
            raise ValueError(f'{path}, line {number}: not a JSON record ({err}); fix or remove '
                             'that line') from None
        if not isinstance(record, dict) or not {'seed', 'run', 'eval'} <= set(record):
            raise ValueError(f'{path}, line {number}: not a study record (needs seed, run, '
                             'eval)')
        records.append(record)
    return records
