"""码上安全: inspection points checked by people (QR code per point), and the hazards they find, in the same closed loop
as alerts (问题发现 → 任务分办 → 协同处置 → 结果反馈).

* :mod:`~alerts.inspections.config`: the ``inspections`` and ``inspection_points`` config sections;
* :mod:`~alerts.inspections.links`: the signed per-point link a QR code carries;
* :mod:`~alerts.inspections.photos`: refusing or re-encoding an uploaded photo;
* :mod:`~alerts.inspections.store`: inspections, hazards and photos in the alert store's file and transactions;
* :mod:`~alerts.inspections.deadlines`: pure: which points and hazards are overdue at a given time.
"""
