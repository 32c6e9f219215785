"""Several nodes on one registry: claims on outbox mail and OCR jobs, nodes, leases, job runs

Revision ID: 0017
Revises: 0016
"""
from alembic import op
import sqlalchemy as sa

revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None


def upgrade() -> None:
    for table in ('outbox', 'ocr_jobs'):
        op.add_column(table, sa.Column('claimed_by', sa.String(200)))
        op.add_column(table, sa.Column('lease_until', sa.DateTime(timezone=True)))
        op.add_column(table, sa.Column('claims', sa.Integer(), nullable=False, server_default='0'))
    op.create_index('ix_outbox_claimed_by', 'outbox', ['claimed_by'])
    op.create_index('ix_ocr_jobs_claimed_by', 'ocr_jobs', ['claimed_by'])
    op.create_table(
        'nodes',
        sa.Column('name', sa.String(128), primary_key=True),
        sa.Column('instance', sa.String(200), nullable=False),
        sa.Column('host', sa.Text(), nullable=False),
        sa.Column('pid', sa.Integer(), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('stopped_at', sa.DateTime(timezone=True)),
    )
    op.create_table(
        'leases',
        sa.Column('name', sa.String(700), primary_key=True),
        sa.Column('holder', sa.String(200), nullable=False),
        sa.Column('acquired_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        'job_runs',
        sa.Column('job', sa.String(64), primary_key=True),
        sa.Column('slot', sa.String(64), nullable=False),
        sa.Column('node', sa.String(200), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('finished_at', sa.DateTime(timezone=True)),
        sa.Column('outcome', sa.Text()),
    )


def downgrade() -> None:
    op.drop_table('job_runs')
    op.drop_table('leases')
    op.drop_table('nodes')
    op.drop_index('ix_ocr_jobs_claimed_by', 'ocr_jobs')
    op.drop_index('ix_outbox_claimed_by', 'outbox')
    for table in ('outbox', 'ocr_jobs'):
        op.drop_column(table, 'claims')
        op.drop_column(table, 'lease_until')
        op.drop_column(table, 'claimed_by')
