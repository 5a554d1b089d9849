"""feedback events: drop the indexes on ts and item_id, which no query uses

Every read of `feedback_events` filters and orders by `ingested_at` (and `event_id`); the producer's
`ts` and the `item_id` were indexed but never searched. Each index costs every insert: on PostgreSQL a
COPY of 20k events took 143-183 ms with all four indexes and 88-104 ms without these two, and
`ranktune bench ingest` rose from 24.8k to 29.7k events/s (README, Benchmarks).

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from alembic import op


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('feedback_events', schema=None) as batch_op:
        batch_op.drop_index('ix_feedback_events_item_id')
        batch_op.drop_index('ix_feedback_events_ts')


def downgrade() -> None:
    with op.batch_alter_table('feedback_events', schema=None) as batch_op:
        batch_op.create_index('ix_feedback_events_ts', ['ts'], unique=False)
        batch_op.create_index('ix_feedback_events_item_id', ['item_id'], unique=False)
