"""one training per database: a renewed lease row instead of a session lock

A session-level advisory lock stays held by the server while a cut link leaves the session half-open
(hours, until TCP keepalive), which would skip every training after a partition; a lease row expires by
itself.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from alembic import op
import sqlalchemy as sa


revision = '0004'
down_revision = '0003'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'training_leases',
        sa.Column('name', sa.String(length=16), nullable=False),
        sa.Column('holder', sa.String(length=128), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint('name'),
    )


def downgrade() -> None:
    op.drop_table('training_leases')
