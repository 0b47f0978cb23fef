"""``ecom2f serve``: a run's parent and gates behind an HTTP endpoint on Ray Serve.

| file | what |
|---|---|
| ``http_api.py`` | the HTTP contract: request parsing, answers, refusal statuses (no Ray) |
| ``deployment.py`` | :class:`Segmenter`, the replica: parent + gates, ``serve.batch``, health route |
| ``server.py`` | checks, Serve start-up on the configured host/port, the command's wait loop |
"""
