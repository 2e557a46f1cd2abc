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
