"""feedback events carry the exploration mark and the model's rank

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op
import sqlalchemy as sa


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('feedback_events', schema=None) as batch_op:
        batch_op.add_column(sa.Column('explore', sa.Boolean(), nullable=True))
        batch_op.add_column(sa.Column('ranked_position', sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('feedback_events', schema=None) as batch_op:
        batch_op.drop_column('ranked_position')
        batch_op.drop_column('explore')
