//! What the OpenAPI document says beyond the derived schemas: the rules between keys of a
//! request that JSON Schema can state, so a generated client knows them before it sends.
//!
//! - `SubmitJobRequest`: exactly one of `job_toml` and `spec` (null counts as absent).
//! - `TrainSpec`: `epochs` may be 0 only with `max_steps` above 0.
//! - `DataSpec`: `truncation_mode` only with `max_prompt_length`.
//! - `POST /v1/datasets`: at least one row.
//!
//! One rule of [`orpo_api::JobSpec::validate`] has no JSON Schema form and is only in the
//! description: `data.max_prompt_length` below `data.max_length`.
//!
//! [`Auth`] adds the bearer scheme to every `/v1` operation, with its 401 and, where a caller
//! can be refused, its 403.

use std::collections::BTreeMap;

use utoipa::openapi::schema::{AllOfBuilder, AnyOfBuilder, ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::{OpenApi, RefOr, Schema};
use utoipa::Modify;

/// The [`Modify`] step of [`super::ApiDoc`].
pub struct Rules;

impl Modify for Rules {
    fn modify(&self, doc: &mut OpenApi) {
        let components = doc.components.get_or_insert_with(Default::default);
        let schemas = &mut components.schemas;
        // `Option` fields take null as absent, so each branch requires its key with a value.
        rule(
            schemas,
            "SubmitJobRequest",
            OneOfBuilder::new()
                .description(Some(
                    "Exactly one of `job_toml` and `spec` (a null one counts as absent).",
                ))
                .item(required_with_type("job_toml", Type::String))
                .item(required_with_type("spec", Type::Object))
                .into(),
        );
        rule(
            schemas,
            "TrainSpec",
            AnyOfBuilder::new()
                .description(Some("`epochs` above 0, or `max_steps` above 0."))
                .item(
                    ObjectBuilder::new().property(
                        "epochs",
                        ObjectBuilder::new()
                            .schema_type(Type::Number)
                            .exclusive_minimum(Some(0.0)),
                    ),
                )
                .item(
                    ObjectBuilder::new().required("max_steps").property(
                        "max_steps",
                        ObjectBuilder::new()
                            .schema_type(Type::Integer)
                            .minimum(Some(1)),
                    ),
                )
                .into(),
        );
        rule(
            schemas,
            "DataSpec",
            AnyOfBuilder::new()
                .description(Some(
                    "`truncation_mode` only with `max_prompt_length`; and `max_prompt_length` \
                     below `max_length` (a rule JSON Schema cannot state).",
                ))
                .item(ObjectBuilder::new().property(
                    "truncation_mode",
                    ObjectBuilder::new().schema_type(Type::Null),
                ))
                .item(required_with_type("max_prompt_length", Type::Integer))
                .into(),
        );
        let upload = doc
            .paths
            .paths
            .get_mut("/v1/datasets")
            .and_then(|p| p.post.as_mut())
            .and_then(|op| op.request_body.as_mut())
            .and_then(|body| body.content.get_mut("application/x-ndjson"))
            .and_then(|content| content.schema.as_mut());
        match upload {
            Some(RefOr::T(Schema::Array(rows))) => rows.min_items = Some(1),
            _ => panic!("POST /v1/datasets takes application/x-ndjson rows"),
        }
    }
}

/// The [`Modify`] step that documents tokens (see [`crate::auth`]).
pub struct Auth;

/// Operations that answer 403 to a caller who may not: another user's job, an admin's route,
/// an `owner` that is not the caller.
const MAY_FORBID: &[&str] = &[
    "submit_job",
    "cancel_job",
    "pause_job",
    "resume_job",
    "delete_job",
    "job_metrics",
    "job_events",
    "list_checkpoints",
    "download_checkpoint_file",
    "list_users",
    "add_user",
    "create_token",
    "add_notify",
    "plan",
];

impl Modify for Auth {
    fn modify(&self, doc: &mut OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        use utoipa::openapi::{ContentBuilder, Ref, ResponseBuilder};
        let components = doc.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some(
                        "A token from `orpod token create` or `POST /v1/tokens`. A daemon \
                         without users (loopback only) needs none.",
                    ))
                    .build(),
            ),
        );
        let error = |what: &str| {
            ResponseBuilder::new()
                .description(what)
                .content(
                    "application/json",
                    ContentBuilder::new()
                        .schema(Some(Ref::from_schema_name("ErrorBody")))
                        .build(),
                )
                .build()
        };
        for (path, item) in doc.paths.paths.iter_mut() {
            if !path.starts_with("/v1/") {
                continue;
            }
            for op in [&mut item.get, &mut item.post, &mut item.delete]
                .into_iter()
                .flatten()
            {
                op.security = Some(vec![utoipa::openapi::security::SecurityRequirement::new::<
                    &str,
                    [&str; 0],
                    &str,
                >("bearer", [])]);
                let responses = &mut op.responses.responses;
                responses.insert(
                    "401".into(),
                    error("No token, or one that is unknown, revoked or expired").into(),
                );
                if op
                    .operation_id
                    .as_deref()
                    .is_some_and(|id| MAY_FORBID.contains(&id))
                {
                    responses.insert(
                        "403".into(),
                        error(
                            "Another user's job, an admin's route, an owner that is not the \
                             caller, or a job over one of the server's limits (limit_exceeded)",
                        )
                        .into(),
                    );
                }
            }
        }
    }
}

/// An object that has `key`, of type `ty`.
fn required_with_type(key: &str, ty: Type) -> ObjectBuilder {
    ObjectBuilder::new()
        .required(key)
        .property(key, ObjectBuilder::new().schema_type(ty))
}

/// `name`'s schema, also held to `rule`.
fn rule(schemas: &mut BTreeMap<String, RefOr<Schema>>, name: &str, rule: Schema) {
    let derived = schemas
        .remove(name)
        .unwrap_or_else(|| panic!("the schema {name} is in the document"));
    schemas.insert(
        name.to_string(),
        AllOfBuilder::new().item(derived).item(rule).into(),
    );
}
