//! Request bodies: JSON parsed with errors that name the offending field.

use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

/// A JSON object as request body; a body that does not parse is a 400 naming
/// the field.
pub struct JsonBody<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonBody<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(req.into_body(), crate::MAX_BODY)
            .await
            .map_err(|_| ApiError::bad_request("the request body could not be read"))?;
        // Every body of the API is an object; serde would also take a struct
        // from a list (`["name", "1G"]`), which the API does not promise.
        if let Some(first) = bytes.iter().find(|b| !b.is_ascii_whitespace())
            && *first != b'{'
        {
            return Err(ApiError::bad_request(
                "invalid request body: expected a JSON object",
            ));
        }
        let de = &mut serde_json::Deserializer::from_slice(&bytes);
        serde_path_to_error::deserialize(de)
            .map(JsonBody)
            .map_err(|e| {
                let field = e.path().to_string();
                let mut err = ApiError::bad_request(format!("invalid request body: {}", e.inner()));
                // serde_path_to_error says "?" when the body broke off before any field
                if field != "." && field != "?" {
                    err = ApiError::bad_request(format!("invalid {field}: {}", e.inner()))
                        .field(field);
                } else if let Some(f) = missing_field(&e.inner().to_string()) {
                    err = err.field(f);
                }
                err
            })
    }
}

fn missing_field(msg: &str) -> Option<String> {
    let rest = msg.strip_prefix("missing field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// A size as JSON: a string like `"10G"` or a whole number of bytes.
pub fn size(v: &serde_json::Value) -> Result<u64, ApiError> {
    let text = match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Number(n) if n.is_u64() => n.to_string(),
        other => {
            return Err(ApiError::new(
                axum::http::StatusCode::BAD_REQUEST,
                "invalid_size",
                format!("invalid size {other}: give a number of bytes or a string like \"10G\""),
            )
            .field("size"));
        }
    };
    ferry_store::parse_size(&text).map_err(ApiError::from)
}

/// The schema of a size field: bytes, or a string like `"10G"`.
pub fn size_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, OneOfBuilder, Type};
    OneOfBuilder::new()
        .item(
            ObjectBuilder::new()
                .schema_type(Type::Integer)
                .minimum(Some(ferry_store::BLOCK_SIZE))
                .maximum(Some(ferry_store::MAX_VOLUME_SIZE))
                .multiple_of(Some(ferry_store::BLOCK_SIZE)),
        )
        .item(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^\\s*[0-9]+([bB]|[kKmMgGtT]([bB]|[iI][bB])?)?\\s*$"))
                .examples(["10G", "512M", "1T"]),
        )
        .into()
}

/// What a name of a volume, group, slot, snapshot, user or tag key looks like.
pub const NAME_PATTERN: &str = "^[a-z0-9][a-z0-9._-]{0,62}$";

fn name_schema() -> utoipa::openapi::schema::Object {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some(NAME_PATTERN))
        .build()
}

/// The schema of a group's slots: slot name to volume name.
pub fn slots_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::ObjectBuilder;
    ObjectBuilder::new()
        .property_names(Some(name_schema()))
        .additional_properties(Some(utoipa::openapi::schema::Schema::Object(name_schema())))
        .into()
}

/// The schema of a group's tags: a key (a name) to a value of at most 255
/// characters, none of them a control character.
pub fn tags_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .property_names(Some(name_schema()))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(format!("^{TAG_VALUE}$"))),
        ))
        .into()
}

/// A tag value: at most 255 characters, none of them a control character
/// (the schema's side of [`ferry_store::tag_value_ok`]).
const TAG_VALUE: &str = "[^\\u0000-\\u001f\\u007f-\\u009f]{0,255}";

/// The schema of a list of slot names.
pub fn slot_list_schema() -> utoipa::openapi::schema::Schema {
    utoipa::openapi::schema::ArrayBuilder::new()
        .items(name_schema())
        .into()
}

/// The schema of a user's grants: `key=value` tags.
pub fn grants_schema() -> utoipa::openapi::schema::Schema {
    use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, Type};
    ArrayBuilder::new()
        .items(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some(format!("^[a-z0-9][a-z0-9._-]{{0,62}}={TAG_VALUE}$"))),
        )
        .into()
}
