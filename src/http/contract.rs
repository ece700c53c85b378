//! What the OpenAPI document promises for every operation besides its own answers, kept true by
//! construction: the query parameters an operation documents are the only ones it accepts
//! (enforced for every route by [`check_query`], from the document itself), and the statuses the
//! middleware can answer for any operation (a malformed request, headers too large, a request
//! past its time limit, a missing token, a rate limit, a body too large) are added to each
//! operation's responses by [`complete_responses`].

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::path::{Operation, ParameterIn, PathItem};
use utoipa::openapi::{OpenApi, RefOr, ResponseBuilder};

use super::error::ApiError;

/// Every operation may answer these, whatever its handler does.
const EVERY_OPERATION: [(u16, &str); 3] = [
    (
        400,
        "malformed request: an unknown or repeated query parameter, or a value or header that \
         cannot be read",
    ),
    (
        431,
        "the request's headers are too large (8 KiB for one value, 32 KiB in all)",
    ),
    (
        503,
        "the store did not answer, the request ran past the server's time limit, or every \
         connection slot is taken; retry after Retry-After",
    ),
];

/// Operations that take a bearer token may also answer these.
const WITH_TOKEN: [(u16, &str); 2] = [
    (401, "no valid bearer token"),
    (
        429,
        "rate limited: this principal's requests a minute, or this client address's failed \
         authentications a minute, are spent; retry after Retry-After",
    ),
];

/// Operations that read a body may also answer these.
const WITH_BODY: [(u16, &str); 2] = [
    (413, "the body is larger than the server's body limit"),
    (415, "the body is not `application/json`"),
];

/// Each operation of `item` with its method.
fn operations(item: &mut PathItem) -> impl Iterator<Item = (Method, &mut Operation)> {
    [
        (Method::GET, item.get.as_mut()),
        (Method::PUT, item.put.as_mut()),
        (Method::POST, item.post.as_mut()),
        (Method::DELETE, item.delete.as_mut()),
        (Method::PATCH, item.patch.as_mut()),
    ]
    .into_iter()
    .filter_map(|(method, op)| op.map(|op| (method, op)))
}

/// Adds to every operation of `doc` the statuses the middleware may answer for it, keeping an
/// operation's own description where it documents the status already.
pub fn complete_responses(doc: &mut OpenApi) {
    for item in doc.paths.paths.values_mut() {
        for (_, op) in operations(item) {
            let mut statuses = EVERY_OPERATION.to_vec();
            if op.security.as_ref().is_some_and(|s| !s.is_empty()) {
                statuses.extend(WITH_TOKEN);
            }
            if op.request_body.is_some() {
                statuses.extend(WITH_BODY);
            }
            for (status, description) in statuses {
                op.responses
                    .responses
                    .entry(status.to_string())
                    .or_insert_with(|| {
                        RefOr::T(ResponseBuilder::new().description(description).build())
                    });
            }
        }
    }
}

/// The query parameters each operation documents, by method and route template.
pub struct QueryContract(HashMap<(Method, String), Vec<String>>);

impl QueryContract {
    pub fn of(doc: &mut OpenApi) -> Self {
        let mut known = HashMap::new();
        for (path, item) in doc.paths.paths.iter_mut() {
            for (method, op) in operations(item) {
                let names = op
                    .parameters
                    .iter()
                    .flatten()
                    .filter(|p| matches!(p.parameter_in, ParameterIn::Query))
                    .map(|p| p.name.clone())
                    .collect();
                known.insert((method, path.clone()), names);
            }
        }
        QueryContract(known)
    }

    /// 400 for a parameter the operation does not document, or one given more than once. A
    /// route the document does not describe (the document itself) takes none.
    fn check(&self, method: &Method, route: &str, query: &str) -> Result<(), ApiError> {
        let method = if method == Method::HEAD {
            &Method::GET
        } else {
            method
        };
        let known: &[String] = self
            .0
            .get(&(method.clone(), route.to_string()))
            .map_or(&[], Vec::as_slice);
        let given: Vec<String> = form_urlencoded::parse(query.as_bytes())
            .map(|(name, _)| name.into_owned())
            .collect();
        for (n, name) in given.iter().enumerate() {
            if !known.contains(name) {
                let takes = if known.is_empty() {
                    "no query parameters".to_string()
                } else {
                    format!("only {}", known.join(", "))
                };
                return Err(ApiError::BadRequest(format!(
                    "unknown query parameter {name:?}: this endpoint takes {takes}"
                )));
            }
            if given[..n].contains(name) {
                return Err(ApiError::BadRequest(format!(
                    "query parameter {name:?} is given more than once"
                )));
            }
        }
        Ok(())
    }
}

/// Refuses, before anything else reads the request, query parameters its operation does not
/// document.
pub async fn check_query(
    State(contract): State<Arc<QueryContract>>,
    req: Request,
    next: Next,
) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|p| p.as_str());
    if let (Some(route), Some(query)) = (route, req.uri().query()) {
        if let Err(e) = contract.check(req.method(), route, query) {
            return e.into_response();
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn contract() -> QueryContract {
        let mut known = HashMap::new();
        known.insert(
            (Method::GET, "/a/{id}".to_string()),
            vec!["from".to_string(), "to".to_string()],
        );
        QueryContract(known)
    }

    #[test]
    fn only_documented_parameters_once_each_are_taken() {
        let c = contract();
        assert!(c.check(&Method::GET, "/a/{id}", "from=1&to=2").is_ok());
        assert!(c.check(&Method::HEAD, "/a/{id}", "to=2").is_ok());
        let unknown = c.check(&Method::GET, "/a/{id}", "from=1&limit=3");
        assert!(
            matches!(&unknown, Err(ApiError::BadRequest(m)) if m.contains("\"limit\"") && m.contains("only from, to")),
            "{unknown:?}"
        );
        let twice = c.check(&Method::GET, "/a/{id}", "from=1&from=2");
        assert!(
            matches!(&twice, Err(ApiError::BadRequest(m)) if m.contains("more than once")),
            "{twice:?}"
        );
        let other = c.check(&Method::POST, "/a/{id}", "from=1");
        assert!(
            matches!(&other, Err(ApiError::BadRequest(m)) if m.contains("no query parameters")),
            "{other:?}"
        );
    }
}
