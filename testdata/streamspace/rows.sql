-- Rows as a running StreamSpace holds them, in every table of schema.sql the
-- functions touch, with the nulls and defaults its API leaves. The migration
-- tests load this after schema.sql and check that migrating changes none of
-- it.

INSERT INTO users (id, username, email, full_name, role, provider, active, password_hash, last_login) VALUES
    ('u-alice', 'alice', 'alice@example.com', 'Alice Liddell', 'user', 'local', true, '$2a$10$abcdefghijklmnopqrstuv', CURRENT_TIMESTAMP),
    ('u-bob', 'bob', 'bob@example.com', NULL, 'operator', 'saml', true, NULL, NULL),
    ('u-carol', 'carol', 'carol@example.com', 'Carol', 'user', 'local', false, NULL, NULL);

INSERT INTO groups (id, name, display_name, description, type) VALUES
    ('g-eng', 'engineering', 'Engineering', NULL, 'team'),
    ('g-ops', 'ops', NULL, 'Operations', 'team');

INSERT INTO group_memberships (id, user_id, group_id, role) VALUES
    ('m-1', 'u-alice', 'g-eng', 'owner'),
    ('m-2', 'u-bob', 'g-eng', 'member'),
    ('m-3', 'u-bob', 'all-users', 'member');

INSERT INTO sessions (id, user_id, team_id, template_name, state, namespace, snapshot_config, pod_name, persistent_home) VALUES
    ('s-1', 'u-alice', NULL, 'firefox', 'running', 'streamspace', '{}', 'ss-s-1-abc', true),
    ('s-2', 'u-bob', 'g-eng', 'vscode', 'hibernated', 'streamspace', NULL, NULL, false);

INSERT INTO catalog_templates (repository_id, name, display_name, category, tags, manifest) VALUES
    ((SELECT id FROM repositories WHERE name = 'Official Templates'), 'firefox', 'Firefox', 'Web Browsers', ARRAY['browser', 'web'], '{"kind": "Template"}'),
    ((SELECT id FROM repositories WHERE name = 'Official Templates'), 'vscode', 'VS Code', 'Development', ARRAY['ide', 'web', 'web'], NULL),
    ((SELECT id FROM repositories WHERE name = 'Official Templates'), 'gimp', 'GIMP', NULL, NULL, NULL),
    ((SELECT id FROM repositories WHERE name = 'Official Templates'), 'blank', 'Blank', 'Development', '{}', NULL);

INSERT INTO user_session_templates (id, user_id, team_id, name, description, category, tags, visibility, base_template, configuration, resources, environment) VALUES
    ('t-1', 'u-alice', NULL, 'My Firefox', NULL, 'Web Browsers', '["web"]', 'private', 'firefox', '{"homepage": "https://example.com"}', '{"memory": "2Gi"}', '{"TZ": "UTC"}'),
    ('t-2', 'u-bob', 'g-eng', 'Team IDE', 'shared', 'Development', NULL, 'team', 'vscode', NULL, NULL, NULL);

INSERT INTO user_session_template_versions (template_id, version_number, template_data, description, created_by, tags) VALUES
    ('t-1', 1, '{"name": "My Firefox"}', 'first', 'u-alice', ARRAY['stable']),
    ('t-1', 2, '{"name": "My Firefox 2"}', NULL, NULL, NULL);

INSERT INTO template_shares (id, template_id, shared_by, shared_with_user_id, shared_with_team_id, permission_level, revoked_at) VALUES
    ('sh-1', 't-1', 'u-alice', 'u-bob', NULL, 'read', NULL),
    ('sh-2', 't-1', 'u-alice', NULL, 'g-eng', 'write', CURRENT_TIMESTAMP);

INSERT INTO notifications (id, user_id, type, title, message, data, priority) VALUES
    ('n-1', 'u-bob', 'template_shared', 'Template shared', 'Alice shared My Firefox', '{"templateId": "t-1"}', 'normal');

INSERT INTO audit_log (user_id, action, resource_type, resource_id, changes, ip_address) VALUES
    ('u-alice', 'create', 'session', 's-1', '{"state": "running"}', '10.0.0.1'),
    (NULL, 'login_failed', 'user', NULL, NULL, NULL);

INSERT INTO batch_operations (id, user_id, operation_type, resource_type, status, total_items, processed_items, success_count, failure_count) VALUES
    ('b-1', 'u-alice', 'delete', 'sessions', 'completed', 2, 2, 2, 0);

INSERT INTO session_snapshots (id, session_id, user_id, name, status, storage_path, size_bytes) VALUES
    ('snap-1', 's-1', 'u-alice', 'before upgrade', 'available', '/data/snapshots/snap-1.tar.gz', 1048576);

INSERT INTO snapshot_restore_jobs (id, snapshot_id, session_id, target_session_id, user_id, status) VALUES
    ('r-1', 'snap-1', 's-1', 's-1', 'u-alice', 'completed');

INSERT INTO integrations (type, name, config, created_by) VALUES
    ('slack', 'Team Slack', '{"webhook_url": "https://hooks.example.com/x"}', 'admin');

INSERT INTO autoscaling_policies (name, target_type, target_id, min_replicas, max_replicas, target_metric_value, scale_up_policy) VALUES
    ('web', 'deployment', 'streamspace-api', 1, 5, 70.00, '{"threshold": 80}');

INSERT INTO scaling_events (policy_id, target_type, target_id, action, previous_replicas, new_replicas, trigger, reason, status) VALUES
    ((SELECT id FROM autoscaling_policies WHERE name = 'web'), 'deployment', 'streamspace-api', 'scale_up', 1, 2, 'manual', 'load', 'completed');
