"""The demo's sample traffic, one set per flow, as the bureau's systems would drop it.

Why these: `import` carries citizens' submissions of every shape the policy must handle (Chinese
names, an empty file, binary data) and one scan over the flow's size limit, which must be
refused and kept in quarantine; `report` and `dispatch` carry documents whose text must never
be readable at a relay (the demo looks for it there); `publish` is the press release of
demo_publish.py.
"""

from __future__ import annotations

import json
from pathlib import Path

__all__ = ["IMPORT_REFUSED", "SAMPLE_LIMIT", "write_dispatch", "write_import", "write_report"]

#: the sample flows' size limit: the scan below is twice that
SAMPLE_LIMIT = 1024 * 1024


def _write(directory: Path, samples: dict[str, bytes]) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, data in samples.items():
        p = directory / name
        p.write_bytes(data)
        paths.append(p)
    return paths


def write_import(directory: Path) -> list[Path]:
    """Citizens' submissions from the internet, and one oversized scan (refused: too-large)."""
    return _write(
        directory,
        {
            "legal-aid-application 法律援助申请.txt": (
                "申请人：张三\n事由：劳动争议法律援助\n".encode()
            ),
            "approval-form-2026-0173.csv": b"form,applicant,submitted\nA-0173,Li Si,2026-11-25\n",
            "citizen-letter.json": json.dumps({"from": "王五", "subject": "咨询公证流程"}).encode(),
            "empty-receipt.txt": b"",
            "site-photo.bin": bytes(range(256)) * 512,
            "scanned-case-file-too-big.pdf": b"%PDF-1.7\n" + b"\x00" * (2 * SAMPLE_LIMIT),
        },
    )


#: the sample names of the import flow that its policy refuses, with the reason code
IMPORT_REFUSED = {"scanned-case-file-too-big.pdf": "too-large"}


def write_report(directory: Path) -> list[Path]:
    """A judicial office's monthly reports to the bureau (classified, government network)."""
    return _write(
        directory,
        {
            "人民调解月报 mediation-report-2026-11.txt": (
                "外滩街道司法所 2026年11月人民调解工作月报\n"
                "受理纠纷 42 件，调解成功 39 件，其中邻里纠纷 17 件、劳动争议 9 件。\n"
                "Waitan judicial office, mediation report, November 2026: 42 cases, 39 settled.\n"
            ).encode(),
            "community-correction-roster-2026-11.csv": (
                b"case,subject,district,status,officer\n"
                b"CC-2026-0311,Zhou Qiang,Huangpu,reporting weekly,Chen Jie\n"
                b"CC-2026-0348,Wu Min,Huangpu,reporting monthly,Chen Jie\n"
            ),
        },
    )


def write_dispatch(directory: Path) -> list[Path]:
    """The bureau's notices down to a judicial office."""
    return _write(
        directory,
        {
            "notice-2026-118 关于开展宪法宣传周活动的通知.txt": (
                "上海市司法局关于开展2026年宪法宣传周活动的通知\n"
                "各区司法局、各街道司法所：请于12月4日前完成宣传活动安排并报送方案。\n"
                "Municipal Bureau notice 2026-118: constitution week plans are due by 4 December.\n"
            ).encode(),
            "training-schedule-2026-12.json": json.dumps(
                {
                    "course": "人民调解员业务培训 mediator training",
                    "dates": ["2026-12-08", "2026-12-09"],
                    "venue": "Huangpu District Bureau of Justice, room 302",
                },
                ensure_ascii=False,
            ).encode(),
        },
    )
