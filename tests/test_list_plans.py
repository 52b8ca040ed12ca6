"""Every list page is read off an index in its own order, never sorted out of a scan of
the whole table. A test database's few rows make a scan and a sort the cheapest plan
whatever the indexes, so the plan is asked for with those discouraged: the planner then
sorts only when no index gives the page's order."""

from __future__ import annotations

import pytest

from gateway.store import billing, events, payments

# Each a merchant's list, newest first: its first page, no filter.
LISTS = {
    "payments": payments.LIST_SQL,
    "refunds": payments.REFUNDS_PAGE_SQL,
    "customers": billing.CUSTOMERS_PAGE_SQL,
    "subscriptions": billing.SUBSCRIPTIONS_PAGE_SQL,
    "invoices": billing.INVOICES_PAGE_SQL,
    "events": events.EVENTS_PAGE_SQL,
    "webhook endpoints": events.ENDPOINTS_PAGE_SQL,
}


@pytest.mark.parametrize("name", sorted(LISTS))
async def test_a_list_page_reads_an_index_in_its_order(db, name):
    statement = LISTS[name]
    async with db.acquire() as conn, conn.transaction():
        # What a large table gets: the planner told off scanning and sorting, as it would
        # be by their costs there. It sorts all the same when no index has the order.
        for option in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
            await conn.execute(f"SET LOCAL {option} = off")
        types = [t.name for t in (await conn.prepare(statement)).get_parameters()]
        # The merchant first, then no cursor and no filter (NULLs), and a limit of 11.
        arguments = [
            "m_x" if i == 0 else 11 if kind in ("int4", "int8") else None
            for i, kind in enumerate(types)
        ]
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + statement, *arguments))
    assert "Sort" not in plan, f"the {name} page sorts:\n{plan}"
    assert "Seq Scan" not in plan, f"the {name} page scans the table:\n{plan}"
