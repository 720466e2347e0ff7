//! JSON bodies of the control API's private files (`/api/v1/private`),
//! shared by `pserver` and the `peerdex` client. The ticket format itself
//! is [`crate::ticket`].
//!
//! | method & path                              | body / answer                                |
//! |--------------------------------------------|----------------------------------------------|
//! | `POST /api/v1/private?name=`               | raw bytes (the plaintext) → 201 [`PrivateFile`] with its ticket |
//! | `GET /api/v1/private`                      | → [`PrivateList`]: keys held here, with their tickets |
//! | `DELETE /api/v1/private/{id}`              | → [`PrivateFile`] removed: key, ciphertext, plaintext copy |
//! | `POST /api/v1/private/fetch`               | [`TicketRequest`] → 202 [`crate::rest::Job`]  |
//! | `GET /api/v1/private/{id}/content`         | → the plaintext of a file fetched by ticket  |

use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::rest::schema;

/// Where this PServer's key of a private file comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PrivateOrigin {
    /// Uploaded here with `--private`: this PServer made the key.
    Owned,
    /// Fetched here with a ticket.
    Received,
}

/// A private file this PServer holds the key of.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PrivateFile {
    /// The ciphertext's id (BLAKE3): what the network stores and serves.
    #[schema(schema_with = schema::file_id)]
    pub file_id: String,
    /// The plaintext's name (never sent to the directory or other peers).
    #[schema(schema_with = schema::file_component)]
    pub name: String,
    /// The plaintext's size in bytes.
    pub size: u64,
    /// The ciphertext's size in bytes (what peers store and send).
    pub ciphertext_size: u64,
    /// The ticket: give it to whoever may read the file (`peerdex get TICKET`).
    #[schema(schema_with = ticket_schema)]
    pub ticket: String,
    pub origin: PrivateOrigin,
    /// This PServer keeps the ciphertext and serves it to other peers.
    pub held: bool,
    /// A received file: its name in the private folder (`PSERVER_PRIVATE_DIR`),
    /// while it is there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub saved_as: Option<String>,
    /// When the key was made or received, Unix seconds.
    pub created_unix: u64,
}

/// `GET /api/v1/private`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct PrivateList {
    /// Oldest first.
    pub files: Vec<PrivateFile>,
    /// Where fetched plaintexts are stored (`PSERVER_PRIVATE_DIR`).
    pub private_dir: String,
}

/// `POST /api/v1/private/fetch`: fetch and open a private file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TicketRequest {
    #[schema(schema_with = ticket_schema)]
    pub ticket: String,
}

/// `POST /api/v1/private?name=`: the plaintext's name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrivateUploadQuery {
    /// The plaintext's name: kept in the ticket only, never announced.
    pub name: String,
}

impl IntoParams for PrivateUploadQuery {
    fn into_params(
        _: impl Fn() -> Option<utoipa::openapi::path::ParameterIn>,
    ) -> Vec<utoipa::openapi::path::Parameter> {
        use utoipa::openapi::Required;
        use utoipa::openapi::path::{ParameterBuilder, ParameterIn};
        vec![
            ParameterBuilder::new()
                .name("name")
                .parameter_in(ParameterIn::Query)
                .required(Required::True)
                .description(Some(
                    "the plaintext's name: kept in the ticket only, never announced",
                ))
                .schema(Some(schema::file_component()))
                .build(),
        ]
    }
}

/// A ticket ([`crate::ticket`]).
pub fn ticket_schema() -> utoipa::openapi::schema::Object {
    utoipa::openapi::schema::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .pattern(Some("^peerdex1[a-z2-7]+$"))
        .min_length(Some(crate::ticket::MIN_TEXT))
        .max_length(Some(crate::ticket::MAX_TEXT))
        .description(Some(
            "a ticket: `peerdex1` and lowercase base32 of the file id, key, nonce prefix, \
             size, name, holder hints and a checksum (see the README, \"Private files\")",
        ))
        .build()
}
