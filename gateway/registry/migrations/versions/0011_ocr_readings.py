"""The reader, its version and each page's confidence for a fax or scan read by OCR

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None

JSON = sa.JSON().with_variant(postgresql.JSONB(), 'postgresql')


def upgrade() -> None:
    op.create_table(
        'ocr_readings',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('letter_id', sa.Integer(), sa.ForeignKey('letters.id'), nullable=False),
        sa.Column('reader', sa.String(32), nullable=False),
        sa.Column('version', sa.Text(), nullable=False, server_default=''),
        sa.Column('pages', sa.Integer(), nullable=False),
        sa.Column('confidences', JSON, nullable=False),
        sa.Column('low_confidence', JSON, nullable=False),
        sa.Column('header', sa.Text()),
        sa.Column('read_at', sa.DateTime(timezone=True), nullable=False),
    )
    op.create_index('ix_ocr_readings_letter_id', 'ocr_readings', ['letter_id'])


def downgrade() -> None:
    op.drop_index('ix_ocr_readings_letter_id', 'ocr_readings')
    op.drop_table('ocr_readings')
