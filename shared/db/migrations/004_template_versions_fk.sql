-- Versions belong to their template.
--
-- Without a foreign key, a deleted template's versions stayed behind, and a
-- new template created with the same id took them over as its own history.
-- Versions left by templates already deleted are removed first; they cannot
-- be read through any route, since every route checks access on the
-- template. The cascade finds a template's versions through the unique
-- (template_id, version_number) index.
delete from template_versions v
where not exists (select 1 from user_session_templates t where t.id = v.template_id);

alter table template_versions
    add constraint template_versions_template_id_fkey
    foreign key (template_id) references user_session_templates (id) on delete cascade;

---- create above / drop below ----

alter table template_versions drop constraint template_versions_template_id_fkey;
