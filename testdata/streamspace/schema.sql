-- StreamSpace's own schema, as its API creates it: the part these functions
-- touch, taken statement for statement and in order from Migrate() in
-- api/internal/db/database.go of github.com/streamspace-dev/streamspace,
-- with the rows that Migrate() seeds.
--
-- Tests, benchmarks and `make run` load this file first, as an install of
-- StreamSpace would have it, and only then apply our migrations
-- (shared/db/migrations), which must work on it unchanged. Keep it in step
-- with StreamSpace's Migrate(); never edit it to suit the functions.

CREATE TABLE IF NOT EXISTS users (
    id VARCHAR(255) PRIMARY KEY,
    username VARCHAR(255) UNIQUE NOT NULL,
    email VARCHAR(255) UNIQUE NOT NULL,
    full_name VARCHAR(255),
    role VARCHAR(50) DEFAULT 'user',
    provider VARCHAR(50) DEFAULT 'local',
    active BOOLEAN DEFAULT true,
    password_hash VARCHAR(255),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    last_login TIMESTAMP
);

CREATE TABLE IF NOT EXISTS groups (
    id VARCHAR(255) PRIMARY KEY,
    name VARCHAR(255) UNIQUE NOT NULL,
    display_name VARCHAR(255),
    description TEXT,
    type VARCHAR(50) DEFAULT 'team',
    parent_id VARCHAR(255) REFERENCES groups(id) ON DELETE CASCADE,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS group_memberships (
    id VARCHAR(255) PRIMARY KEY,
    user_id VARCHAR(255) REFERENCES users(id) ON DELETE CASCADE,
    group_id VARCHAR(255) REFERENCES groups(id) ON DELETE CASCADE,
    role VARCHAR(50) DEFAULT 'member',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(user_id, group_id)
);

CREATE INDEX IF NOT EXISTS idx_users_username ON users(username);

CREATE INDEX IF NOT EXISTS idx_users_email ON users(email);

CREATE INDEX IF NOT EXISTS idx_users_role ON users(role);

CREATE INDEX IF NOT EXISTS idx_users_provider ON users(provider);

CREATE INDEX IF NOT EXISTS idx_groups_name ON groups(name);

CREATE INDEX IF NOT EXISTS idx_groups_type ON groups(type);

CREATE INDEX IF NOT EXISTS idx_groups_parent_id ON groups(parent_id);

CREATE INDEX IF NOT EXISTS idx_group_memberships_user_id ON group_memberships(user_id);

CREATE INDEX IF NOT EXISTS idx_group_memberships_group_id ON group_memberships(group_id);

CREATE TABLE IF NOT EXISTS sessions (
    id VARCHAR(255) PRIMARY KEY,
    user_id VARCHAR(255) REFERENCES users(id) ON DELETE CASCADE,
    team_id VARCHAR(255) REFERENCES groups(id) ON DELETE SET NULL,
    template_name VARCHAR(255),
    state VARCHAR(50),
    app_type VARCHAR(50) DEFAULT 'desktop',
    active_connections INT DEFAULT 0,
    url TEXT,
    namespace VARCHAR(255) DEFAULT 'streamspace',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    last_connection TIMESTAMP,
    last_disconnect TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX IF NOT EXISTS idx_sessions_user_id ON sessions(user_id);

CREATE INDEX IF NOT EXISTS idx_sessions_team_id ON sessions(team_id);

CREATE INDEX IF NOT EXISTS idx_sessions_state ON sessions(state);

CREATE TABLE IF NOT EXISTS repositories (
    id SERIAL PRIMARY KEY,
    name VARCHAR(255) UNIQUE,
    url TEXT NOT NULL,
    branch VARCHAR(100) DEFAULT 'main',
    type VARCHAR(50) DEFAULT 'template',
    auth_type VARCHAR(50) DEFAULT 'none',
    auth_secret VARCHAR(255),
    last_sync TIMESTAMP,
    template_count INT DEFAULT 0,
    status VARCHAR(50) DEFAULT 'pending',
    error_message TEXT,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

INSERT INTO repositories (name, url, branch, type, auth_type, status) VALUES
    ('Official Plugins', 'https://github.com/JoshuaAFerguson/streamspace-plugins', 'main', 'plugin', 'none', 'pending'),
    ('Official Templates', 'https://github.com/JoshuaAFerguson/streamspace-templates', 'main', 'template', 'none', 'pending')
    ON CONFLICT (name) DO NOTHING;

CREATE TABLE IF NOT EXISTS catalog_templates (
    id SERIAL PRIMARY KEY,
    repository_id INT REFERENCES repositories(id) ON DELETE CASCADE,
    name VARCHAR(255),
    display_name VARCHAR(255),
    description TEXT,
    category VARCHAR(100),
    app_type VARCHAR(50) DEFAULT 'desktop',
    icon_url TEXT,
    manifest JSONB,
    tags TEXT[],
    install_count INT DEFAULT 0,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    UNIQUE(repository_id, name)
);

CREATE INDEX IF NOT EXISTS idx_catalog_templates_category ON catalog_templates(category);

CREATE INDEX IF NOT EXISTS idx_catalog_templates_app_type ON catalog_templates(app_type);

ALTER TABLE catalog_templates ADD COLUMN IF NOT EXISTS is_featured BOOLEAN DEFAULT false;

ALTER TABLE catalog_templates ADD COLUMN IF NOT EXISTS version VARCHAR(50) DEFAULT '1.0.0';

ALTER TABLE catalog_templates ADD COLUMN IF NOT EXISTS view_count INT DEFAULT 0;

ALTER TABLE catalog_templates ADD COLUMN IF NOT EXISTS avg_rating DECIMAL(3,2) DEFAULT 0.0;

ALTER TABLE catalog_templates ADD COLUMN IF NOT EXISTS rating_count INT DEFAULT 0;

ALTER TABLE catalog_templates ADD COLUMN IF NOT EXISTS platform VARCHAR(50) DEFAULT 'kubernetes';

CREATE INDEX IF NOT EXISTS idx_catalog_templates_platform ON catalog_templates(platform);

CREATE INDEX IF NOT EXISTS idx_catalog_templates_featured ON catalog_templates(is_featured);

CREATE INDEX IF NOT EXISTS idx_catalog_templates_rating ON catalog_templates(avg_rating DESC);

CREATE INDEX IF NOT EXISTS idx_catalog_templates_views ON catalog_templates(view_count DESC);

CREATE INDEX IF NOT EXISTS idx_catalog_templates_installs ON catalog_templates(install_count DESC);

CREATE TABLE IF NOT EXISTS audit_log (
    id SERIAL PRIMARY KEY,
    user_id VARCHAR(255),
    action VARCHAR(100),
    resource_type VARCHAR(100),
    resource_id VARCHAR(255),
    changes JSONB,
    timestamp TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    ip_address VARCHAR(45)
);

CREATE INDEX IF NOT EXISTS idx_audit_log_timestamp ON audit_log(timestamp DESC);

CREATE INDEX IF NOT EXISTS idx_audit_log_user_id ON audit_log(user_id);

INSERT INTO users (id, username, email, full_name, role, provider, active)
    VALUES ('admin', 'admin', 'admin@streamspace.local', 'Administrator', 'admin', 'local', true)
    ON CONFLICT (id) DO NOTHING;

INSERT INTO groups (id, name, display_name, description, type)
    VALUES ('all-users', 'all_users', 'All Users', 'Default group containing all users', 'system')
    ON CONFLICT (name) DO NOTHING;

INSERT INTO group_memberships (id, user_id, group_id, role, created_at)
    SELECT 'admin-all-users', 'admin', id, 'member', NOW()
    FROM groups WHERE name = 'all_users'
    ON CONFLICT (user_id, group_id) DO NOTHING;

CREATE TABLE IF NOT EXISTS template_shares (
    id VARCHAR(255) PRIMARY KEY,
    template_id VARCHAR(255) NOT NULL,
    shared_by VARCHAR(255) REFERENCES users(id) ON DELETE CASCADE,
    shared_with_user_id VARCHAR(255) REFERENCES users(id) ON DELETE CASCADE,
    shared_with_team_id VARCHAR(255) REFERENCES groups(id) ON DELETE CASCADE,
    permission_level VARCHAR(50) NOT NULL DEFAULT 'read',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    revoked_at TIMESTAMP,
    CONSTRAINT chk_template_shared_with CHECK (
    (shared_with_user_id IS NOT NULL AND shared_with_team_id IS NULL) OR
    (shared_with_user_id IS NULL AND shared_with_team_id IS NOT NULL)
    ),
    UNIQUE(template_id, shared_with_user_id),
    UNIQUE(template_id, shared_with_team_id)
);

CREATE INDEX IF NOT EXISTS idx_template_shares_template_id ON template_shares(template_id);

CREATE INDEX IF NOT EXISTS idx_template_shares_shared_by ON template_shares(shared_by);

CREATE INDEX IF NOT EXISTS idx_template_shares_user ON template_shares(shared_with_user_id);

CREATE INDEX IF NOT EXISTS idx_template_shares_team ON template_shares(shared_with_team_id);

CREATE INDEX IF NOT EXISTS idx_template_shares_active ON template_shares(template_id) WHERE revoked_at IS NULL;

CREATE INDEX IF NOT EXISTS idx_sessions_user_state ON sessions(user_id, state);

CREATE INDEX IF NOT EXISTS idx_audit_log_user_timestamp ON audit_log(user_id, timestamp DESC);

CREATE INDEX IF NOT EXISTS idx_catalog_templates_category_rating ON catalog_templates(category, avg_rating DESC);

CREATE INDEX IF NOT EXISTS idx_catalog_templates_category_installs ON catalog_templates(category, install_count DESC);

CREATE INDEX IF NOT EXISTS idx_catalog_templates_apptype_rating ON catalog_templates(app_type, avg_rating DESC);

CREATE TABLE IF NOT EXISTS notifications (
    id VARCHAR(255) PRIMARY KEY,
    user_id VARCHAR(255) REFERENCES users(id) ON DELETE CASCADE,
    type VARCHAR(100) NOT NULL,
    title VARCHAR(500) NOT NULL,
    message TEXT NOT NULL,
    data JSONB DEFAULT '{}',
    priority VARCHAR(20) DEFAULT 'normal',
    is_read BOOLEAN DEFAULT false,
    action_url TEXT,
    action_text VARCHAR(100),
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    read_at TIMESTAMP
);

CREATE INDEX IF NOT EXISTS idx_notifications_user_id ON notifications(user_id);

CREATE INDEX IF NOT EXISTS idx_notifications_is_read ON notifications(is_read);

CREATE INDEX IF NOT EXISTS idx_notifications_created_at ON notifications(created_at DESC);

CREATE INDEX IF NOT EXISTS idx_notifications_type ON notifications(type);

CREATE INDEX IF NOT EXISTS idx_notifications_priority ON notifications(priority);

CREATE INDEX IF NOT EXISTS idx_notifications_user_unread ON notifications(user_id, is_read, created_at DESC) WHERE is_read = false;

CREATE TABLE IF NOT EXISTS session_snapshots (
    id VARCHAR(255) PRIMARY KEY,
    session_id VARCHAR(255) REFERENCES sessions(id) ON DELETE CASCADE,
    user_id VARCHAR(255) REFERENCES users(id) ON DELETE CASCADE,
    name VARCHAR(255) NOT NULL,
    description TEXT,
    type VARCHAR(50) DEFAULT 'manual',
    status VARCHAR(50) DEFAULT 'creating',
    storage_path TEXT,
    size_bytes BIGINT DEFAULT 0,
    metadata JSONB DEFAULT '{}',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    completed_at TIMESTAMP,
    expires_at TIMESTAMP,
    error_message TEXT
);

CREATE INDEX IF NOT EXISTS idx_session_snapshots_session_id ON session_snapshots(session_id);

CREATE INDEX IF NOT EXISTS idx_session_snapshots_user_id ON session_snapshots(user_id);

CREATE INDEX IF NOT EXISTS idx_session_snapshots_status ON session_snapshots(status);

CREATE INDEX IF NOT EXISTS idx_session_snapshots_type ON session_snapshots(type);

CREATE INDEX IF NOT EXISTS idx_session_snapshots_created_at ON session_snapshots(created_at DESC);

CREATE INDEX IF NOT EXISTS idx_session_snapshots_expires_at ON session_snapshots(expires_at);

CREATE INDEX IF NOT EXISTS idx_session_snapshots_user_available ON session_snapshots(user_id, status) WHERE status = 'available';

CREATE TABLE IF NOT EXISTS snapshot_restore_jobs (
    id VARCHAR(255) PRIMARY KEY,
    snapshot_id VARCHAR(255) REFERENCES session_snapshots(id) ON DELETE CASCADE,
    session_id VARCHAR(255) REFERENCES sessions(id) ON DELETE SET NULL,
    target_session_id VARCHAR(255) REFERENCES sessions(id) ON DELETE SET NULL,
    user_id VARCHAR(255) REFERENCES users(id) ON DELETE CASCADE,
    status VARCHAR(50) DEFAULT 'pending',
    started_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    completed_at TIMESTAMP,
    error_message TEXT
);

CREATE INDEX IF NOT EXISTS idx_snapshot_restore_jobs_snapshot_id ON snapshot_restore_jobs(snapshot_id);

CREATE INDEX IF NOT EXISTS idx_snapshot_restore_jobs_user_id ON snapshot_restore_jobs(user_id);

CREATE INDEX IF NOT EXISTS idx_snapshot_restore_jobs_status ON snapshot_restore_jobs(status);

CREATE INDEX IF NOT EXISTS idx_snapshot_restore_jobs_started_at ON snapshot_restore_jobs(started_at DESC);

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS snapshot_config JSONB DEFAULT '{}';

CREATE TABLE IF NOT EXISTS user_session_templates (
    id VARCHAR(255) PRIMARY KEY,
    user_id VARCHAR(255) REFERENCES users(id) ON DELETE CASCADE,
    team_id VARCHAR(255) REFERENCES groups(id) ON DELETE SET NULL,
    name VARCHAR(255) NOT NULL,
    description TEXT,
    icon VARCHAR(500),
    category VARCHAR(100),
    tags JSONB DEFAULT '[]',
    visibility VARCHAR(50) DEFAULT 'private',
    base_template VARCHAR(255) NOT NULL,
    configuration JSONB DEFAULT '{}',
    resources JSONB DEFAULT '{}',
    environment JSONB DEFAULT '{}',
    is_default BOOLEAN DEFAULT false,
    usage_count INT DEFAULT 0,
    version VARCHAR(50) DEFAULT '1.0.0',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX IF NOT EXISTS idx_user_session_templates_user_id ON user_session_templates(user_id);

CREATE INDEX IF NOT EXISTS idx_user_session_templates_team_id ON user_session_templates(team_id);

CREATE INDEX IF NOT EXISTS idx_user_session_templates_visibility ON user_session_templates(visibility);

CREATE INDEX IF NOT EXISTS idx_user_session_templates_category ON user_session_templates(category);

CREATE INDEX IF NOT EXISTS idx_user_session_templates_usage_count ON user_session_templates(usage_count DESC);

CREATE INDEX IF NOT EXISTS idx_user_session_templates_is_default ON user_session_templates(is_default) WHERE is_default = true;

CREATE INDEX IF NOT EXISTS idx_user_session_templates_user_default ON user_session_templates(user_id, is_default) WHERE is_default = true;

CREATE INDEX IF NOT EXISTS idx_user_session_templates_public_usage ON user_session_templates(visibility, usage_count DESC) WHERE visibility = 'public';

CREATE TABLE IF NOT EXISTS user_session_template_versions (
    id SERIAL PRIMARY KEY,
    template_id VARCHAR(255) NOT NULL,
    version_number INT NOT NULL,
    template_data JSONB NOT NULL,
    description TEXT,
    created_by VARCHAR(255) REFERENCES users(id) ON DELETE SET NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    tags TEXT[],
    UNIQUE(template_id, version_number)
);

CREATE INDEX IF NOT EXISTS idx_user_session_template_versions_template_id ON user_session_template_versions(template_id);

CREATE INDEX IF NOT EXISTS idx_user_session_template_versions_created_by ON user_session_template_versions(created_by);

CREATE INDEX IF NOT EXISTS idx_user_session_template_versions_created_at ON user_session_template_versions(created_at DESC);

CREATE TABLE IF NOT EXISTS batch_operations (
    id VARCHAR(255) PRIMARY KEY,
    user_id VARCHAR(255) REFERENCES users(id) ON DELETE CASCADE,
    operation_type VARCHAR(100) NOT NULL,
    resource_type VARCHAR(100) NOT NULL,
    status VARCHAR(50) DEFAULT 'pending',
    total_items INT DEFAULT 0,
    processed_items INT DEFAULT 0,
    success_count INT DEFAULT 0,
    failure_count INT DEFAULT 0,
    errors JSONB DEFAULT '[]',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    completed_at TIMESTAMP
);

CREATE INDEX IF NOT EXISTS idx_batch_operations_user_id ON batch_operations(user_id);

CREATE INDEX IF NOT EXISTS idx_batch_operations_status ON batch_operations(status);

CREATE INDEX IF NOT EXISTS idx_batch_operations_created_at ON batch_operations(created_at DESC);

CREATE INDEX IF NOT EXISTS idx_batch_operations_operation_type ON batch_operations(operation_type);

CREATE INDEX IF NOT EXISTS idx_batch_operations_user_status ON batch_operations(user_id, status) WHERE status IN ('pending', 'processing');

CREATE TABLE IF NOT EXISTS template_versions (
    id SERIAL PRIMARY KEY,
    template_id VARCHAR(255) NOT NULL,
    version VARCHAR(50) NOT NULL,
    major_version INT NOT NULL,
    minor_version INT NOT NULL,
    patch_version INT NOT NULL,
    display_name VARCHAR(255) NOT NULL,
    description TEXT,
    configuration JSONB,
    base_image TEXT,
    parent_template_id VARCHAR(255),
    parent_version VARCHAR(50),
    changelog TEXT,
    status VARCHAR(50) DEFAULT 'draft',
    is_default BOOLEAN DEFAULT false,
    test_results JSONB,
    created_by VARCHAR(255) REFERENCES users(id) ON DELETE SET NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    published_at TIMESTAMP,
    deprecated_at TIMESTAMP,
    UNIQUE(template_id, version)
);

CREATE INDEX IF NOT EXISTS idx_template_versions_template_id ON template_versions(template_id);

CREATE INDEX IF NOT EXISTS idx_template_versions_version ON template_versions(version);

CREATE INDEX IF NOT EXISTS idx_template_versions_status ON template_versions(status);

CREATE INDEX IF NOT EXISTS idx_template_versions_is_default ON template_versions(is_default) WHERE is_default = true;

CREATE INDEX IF NOT EXISTS idx_template_versions_parent ON template_versions(parent_template_id);

CREATE TABLE IF NOT EXISTS integrations (
    id SERIAL PRIMARY KEY,
    type VARCHAR(50) NOT NULL,
    name VARCHAR(255) NOT NULL,
    description TEXT,
    config JSONB NOT NULL,
    enabled BOOLEAN DEFAULT true,
    events JSONB,
    test_mode BOOLEAN DEFAULT false,
    last_test_at TIMESTAMP,
    last_success_at TIMESTAMP,
    created_by VARCHAR(255) REFERENCES users(id) ON DELETE SET NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX IF NOT EXISTS idx_integrations_type ON integrations(type);

CREATE INDEX IF NOT EXISTS idx_integrations_enabled ON integrations(enabled) WHERE enabled = true;

CREATE TABLE IF NOT EXISTS autoscaling_policies (
    id SERIAL PRIMARY KEY,
    name VARCHAR(255) NOT NULL UNIQUE,
    description TEXT,
    target_type VARCHAR(50) NOT NULL,
    target_id VARCHAR(255) NOT NULL,
    enabled BOOLEAN DEFAULT true,
    scaling_mode VARCHAR(50) DEFAULT 'horizontal',
    min_replicas INT DEFAULT 1,
    max_replicas INT DEFAULT 10,
    metric_type VARCHAR(50) DEFAULT 'cpu',
    target_metric_value DECIMAL(10,2),
    scale_up_policy JSONB,
    scale_down_policy JSONB,
    predictive_scaling JSONB,
    cooldown_period INT DEFAULT 300,
    metadata JSONB,
    created_by VARCHAR(255) REFERENCES users(id) ON DELETE SET NULL,
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP,
    updated_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE TABLE IF NOT EXISTS scaling_events (
    id SERIAL PRIMARY KEY,
    policy_id INT REFERENCES autoscaling_policies(id) ON DELETE CASCADE,
    target_type VARCHAR(50) NOT NULL,
    target_id VARCHAR(255) NOT NULL,
    action VARCHAR(50) NOT NULL,
    previous_replicas INT NOT NULL,
    new_replicas INT NOT NULL,
    trigger VARCHAR(50) NOT NULL,
    metric_value DECIMAL(10,2),
    reason TEXT,
    status VARCHAR(50) DEFAULT 'pending',
    created_at TIMESTAMP DEFAULT CURRENT_TIMESTAMP
);

CREATE INDEX IF NOT EXISTS idx_autoscaling_policies_enabled ON autoscaling_policies(enabled) WHERE enabled = true;

CREATE INDEX IF NOT EXISTS idx_autoscaling_policies_target ON autoscaling_policies(target_type, target_id);

CREATE INDEX IF NOT EXISTS idx_scaling_events_policy_id ON scaling_events(policy_id);

CREATE INDEX IF NOT EXISTS idx_scaling_events_created_at ON scaling_events(created_at DESC);

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS platform VARCHAR(50) DEFAULT 'kubernetes';

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS controller_id VARCHAR(255);

CREATE INDEX IF NOT EXISTS idx_sessions_platform ON sessions(platform);

CREATE INDEX IF NOT EXISTS idx_sessions_controller_id ON sessions(controller_id);

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS pod_name VARCHAR(255);

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS memory VARCHAR(50);

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS cpu VARCHAR(50);

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS persistent_home BOOLEAN DEFAULT false;

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS idle_timeout VARCHAR(50);

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS max_session_duration VARCHAR(50);

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS last_activity TIMESTAMP;

CREATE INDEX IF NOT EXISTS idx_sessions_last_activity ON sessions(last_activity);
