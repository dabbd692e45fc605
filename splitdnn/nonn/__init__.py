"""Network of Neural Networks (NoNN): K disjoint students, one device each, joined by one layer.

One folder for the whole family, in the order a run goes (lower never imports higher; the
``nonn-layers`` contract in ``pyproject.toml``):

* :mod:`~splitdnn.nonn.partition` — the teacher's last filters in K groups (community
  detection on a co-activation graph; numpy and networkx, no torch);
* :mod:`~splitdnn.nonn.members` — a member: a slice of a pretrained network after a frozen
  shared prefix;
* :mod:`~splitdnn.nonn.bundle` — ``nonn.json`` + one ONNX file per member + ``join.npz``, on
  :mod:`splitdnn.bundle`'s hashing, verification and write (numpy and pydantic: the gateway
  and the member services load it without torch);
* :mod:`~splitdnn.nonn.method` — ``method: nonn`` on the one epoch loop
  (:mod:`splitdnn.distill.trainer`), registered in :mod:`splitdnn.methods`;
* :mod:`~splitdnn.nonn.export` — a run (or its committed assets) -> a bundle, on
  :mod:`splitdnn.to_onnx` (``splitdnn export nonn``, ``splitdnn nonn assets``);
* :mod:`~splitdnn.nonn.figures` — the served path's accuracy on held-out images against the
  teacher's, and each member's costs (``splitdnn nonn figures``).

Served by ``services/member/`` (one member each, ``splitdnn serve member``) and the gateway's
``mode=nonn`` (``gateway/nonn.py``). Nothing is imported here, so the gateway's import of the
bundle module pulls in no torch.
"""
