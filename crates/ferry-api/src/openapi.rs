//! The OpenAPI document, built from the route table ([`crate::routes::table`])
//! so it cannot list an endpoint the router lacks or miss one it has. It is
//! served at `/v1/openapi.json` and committed as `docs/openapi.json`; a test
//! fails when the two drift.

use axum::http::Method;
use utoipa::ToSchema;
use utoipa::openapi::path::{
    HttpMethod, Operation, OperationBuilder, ParameterBuilder, ParameterIn,
};
use utoipa::openapi::request_body::RequestBodyBuilder;
use utoipa::openapi::schema::{ArrayBuilder, ObjectBuilder, OneOfBuilder, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{
    ComponentsBuilder, ContentBuilder, InfoBuilder, OpenApi, OpenApiBuilder, PathItem,
    PathsBuilder, Ref, RefOr, Required, ResponseBuilder, ResponsesBuilder,
};

use crate::routes::{RouteInfo, table};

/// Named schemas collected while describing the routes.
pub type Components = Vec<(String, RefOr<utoipa::openapi::schema::Schema>)>;

/// Describes one type: registers its named schemas, returns a reference.
pub type Schema = fn(&mut Components) -> RefOr<utoipa::openapi::schema::Schema>;

/// A reference to `T`, registering `T` and what it refers to.
pub fn schema_of<T: ToSchema>(out: &mut Components) -> RefOr<utoipa::openapi::schema::Schema> {
    out.push((T::name().into_owned(), T::schema()));
    T::schemas(out);
    RefOr::Ref(Ref::from_schema_name(T::name()))
}

/// A list of `T`.
pub fn list_of<T: ToSchema>(out: &mut Components) -> RefOr<utoipa::openapi::schema::Schema> {
    ArrayBuilder::new().items(schema_of::<T>(out)).into()
}

const JSON: &str = "application/json";
const BEARER: &str = "bearer";

/// The whole document.
pub fn document() -> OpenApi {
    let mut comps: Components = Vec::new();
    let error = schema_of::<crate::error::ErrorBody>(&mut comps);
    let mut paths = PathsBuilder::new();
    for r in table() {
        let op = operation(&r, &mut comps, &error);
        paths = paths.path(r.path, PathItem::new(http_method(&r.method), op));
    }
    let mut components = ComponentsBuilder::new().security_scheme(
        BEARER,
        SecurityScheme::Http(
            HttpBuilder::new()
                .scheme(HttpAuthScheme::Bearer)
                .bearer_format("ferry_<hex>")
                .description(Some(
                    "A token from `DATA/admin.token` or `ferry token create`.",
                ))
                .build(),
        ),
    );
    comps.sort_by(|a, b| a.0.cmp(&b.0));
    comps.dedup_by(|a, b| a.0 == b.0);
    for (name, schema) in comps {
        components = components.schema(name, schema);
    }
    OpenApiBuilder::new()
        .info(
            InfoBuilder::new()
                .title("ferry")
                .version(env!("CARGO_PKG_VERSION"))
                .description(Some(
                    "Block storage for virtual machines with disaster recovery built in. \
                     Every operation needs a bearer token whose role holds the privilege \
                     named in the operation (`x-ferry-privilege`). Errors are JSON: \
                     `{\"error\": {\"code\", \"message\", \"field\"}}`.",
                )),
        )
        .paths(paths.build())
        .components(Some(components.build()))
        .security(Some([SecurityRequirement::new(
            BEARER,
            Vec::<String>::new(),
        )]))
        .build()
}

/// The document as committed in `docs/openapi.json`.
pub fn document_json() -> String {
    let mut text = document()
        .to_pretty_json()
        .expect("the OpenAPI document serializes");
    text.push('\n');
    text
}

fn operation(
    r: &RouteInfo,
    comps: &mut Components,
    error: &RefOr<utoipa::openapi::schema::Schema>,
) -> Operation {
    let tag = r.action.split('.').next().unwrap_or(r.action);
    let mut op = OperationBuilder::new()
        .operation_id(Some(r.action))
        .summary(Some(r.summary))
        .description(Some(format!(
            "Needs the `{}` privilege.",
            r.privilege.as_str()
        )))
        .tag(tag);
    for seg in r.path.split('/') {
        if let Some(name) = seg.strip_prefix('{').and_then(|s| s.strip_suffix('}')) {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(name)
                    .parameter_in(ParameterIn::Path)
                    .required(Required::True)
                    .schema(Some(
                        ObjectBuilder::new().schema_type(Type::String).pattern(Some(
                            if name == "id" {
                                "^[0-9a-f]{12}$"
                            } else {
                                crate::body::NAME_PATTERN
                            },
                        )),
                    )),
            );
        }
    }
    for (name, required, description) in &r.query {
        op = op.parameter(
            ParameterBuilder::new()
                .name(*name)
                .parameter_in(ParameterIn::Query)
                .required(if *required {
                    Required::True
                } else {
                    Required::False
                })
                .description(Some(*description))
                .schema(Some(
                    ObjectBuilder::new()
                        .schema_type(Type::String)
                        .pattern(Some(crate::body::NAME_PATTERN)),
                )),
        );
    }
    if r.plan.is_some() {
        op = op.parameter(
            ParameterBuilder::new()
                .name("dry_run")
                .parameter_in(ParameterIn::Query)
                .required(Required::False)
                .description(Some(
                    "Check the request against the current state and answer 200 with \
                     the changes it would make (a Plan), changing nothing.",
                ))
                .schema(Some(ObjectBuilder::new().schema_type(Type::Boolean))),
        );
    }
    if let Some(body) = r.body {
        op = op.request_body(Some(
            RequestBodyBuilder::new()
                .required(Some(Required::True))
                .content(
                    JSON,
                    ContentBuilder::new().schema(Some(body(comps))).build(),
                )
                .build(),
        ));
    }
    let (status, reply) = r
        .reply
        .unwrap_or_else(|| panic!("route {} declares no reply", r.action));
    let mut ok = ResponseBuilder::new()
        .description(status.canonical_reason().unwrap_or("Success").to_owned());
    let plan = r
        .plan
        .as_ref()
        .map(|_| schema_of::<crate::routes::Plan>(comps));
    let mut dry = None;
    match (reply, plan) {
        // a 200 reply is either the result or, for a dry run, the plan
        (Some(reply), Some(plan)) if status == axum::http::StatusCode::OK => {
            let either = OneOfBuilder::new().item(reply(comps)).item(plan);
            ok = ok.content(JSON, ContentBuilder::new().schema(Some(either)).build());
        }
        (reply, plan) => {
            if let Some(reply) = reply {
                ok = ok.content(
                    JSON,
                    ContentBuilder::new().schema(Some(reply(comps))).build(),
                );
            }
            dry = plan.map(|plan| {
                ResponseBuilder::new()
                    .description("Dry run: what would change")
                    .content(JSON, ContentBuilder::new().schema(Some(plan)).build())
                    .build()
            });
        }
    }
    let err = |what: &str| {
        ResponseBuilder::new()
            .description(what)
            .content(
                JSON,
                ContentBuilder::new().schema(Some(error.clone())).build(),
            )
            .build()
    };
    let mut responses = ResponsesBuilder::new().response(status.as_u16().to_string(), ok.build());
    if let Some(dry) = dry {
        responses = responses.response("200", dry);
    }
    let responses = responses
        .response(
            "4XX",
            err(
                "Bad input (400), no or a bad token (401), a role without the privilege (403), \
                 not found or not visible to you (404), a conflict (409), a body too large (413)",
            ),
        )
        .response("5XX", err("A storage failure on the server"))
        .build();
    let mut op = op.responses(responses).build();
    let ext = utoipa::openapi::extensions::ExtensionsBuilder::new()
        .add("x-ferry-privilege", r.privilege.as_str())
        .build();
    op.extensions = Some(ext);
    op
}

fn http_method(m: &Method) -> HttpMethod {
    match *m {
        Method::GET => HttpMethod::Get,
        Method::POST => HttpMethod::Post,
        Method::PUT => HttpMethod::Put,
        Method::DELETE => HttpMethod::Delete,
        Method::PATCH => HttpMethod::Patch,
        _ => panic!("the table uses no method {m}"),
    }
}
