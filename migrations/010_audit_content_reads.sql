-- Reading a message's content as an operator (`wabot trace --show-content`)
-- is recorded like erasing or redriving it: who opened which message, when.
ALTER TABLE healthcare.audit_log DROP CONSTRAINT IF EXISTS audit_log_action_check;
ALTER TABLE healthcare.audit_log ADD CONSTRAINT audit_log_action_check
    CHECK (action IN ('erase', 'redrive', 'redrive_replies', 'reencrypt', 'purge',
                      'read_content'));
