// Notifications over the server's GraphQL endpoint (plain fetch POST with the
// same JWT as the socket) plus live `notification.new` pushes from the socket.

import type { Unsubscribe } from "./emitter.js";
import { GraphqlError, RealtimeError } from "./errors.js";
import { isObject, type EventPush, type JsonValue, type NotificationNewData } from "./protocol.js";

/** The slice of fetch the helper uses; globalThis.fetch fits it. */
export type FetchLike = (
  url: string,
  init: { method: string; headers: Record<string, string>; body: string },
) => Promise<{ ok: boolean; status: number; json(): Promise<unknown> }>;

export interface Notification {
  id: string;
  type: string;
  content: JsonValue;
  /** ISO 8601. */
  createdAt: string;
  readAt: string | null;
  read: boolean;
}

export interface NotificationPage {
  items: Notification[];
  hasNextPage: boolean;
  /** Pass as `after` for the next page. */
  endCursor: string | null;
}

export interface ListNotificationsOptions {
  /** Page size, 1 to the server's graphql.max_page_size; default 20. */
  first?: number;
  after?: string;
  unreadOnly?: boolean;
}

/** What the helper needs from its client. */
export interface NotificationsHost {
  getToken(): Promise<string>;
  graphqlUrl(): string;
  fetch: FetchLike;
  onEvent(listener: (push: EventPush) => void): Unsubscribe;
}

const NOTIFICATION_FIELDS = "id type content createdAt readAt read";

const LIST_QUERY = `query($first:Int!,$after:String,$unreadOnly:Boolean!){notifications(first:$first,after:$after,unreadOnly:$unreadOnly){edges{cursor node{${NOTIFICATION_FIELDS}}}pageInfo{hasNextPage endCursor}}}`;

function readNotification(node: unknown): Notification {
  const fields = isObject(node) ? node : {};
  return {
    id: String(fields.id),
    type: String(fields.type),
    content: (fields.content ?? null) as JsonValue,
    createdAt: String(fields.createdAt),
    readAt: typeof fields.readAt === "string" ? fields.readAt : null,
    read: fields.read === true,
  };
}

function firstGraphqlError(body: unknown, status: number): GraphqlError | undefined {
  const errors = isObject(body) && Array.isArray(body.errors) ? body.errors : [];
  const first: unknown = errors[0];
  if (first === undefined) return undefined;
  const error = isObject(first) ? first : {};
  const extensions = isObject(error.extensions) ? error.extensions : {};
  const retryAfter = typeof extensions.retryAfter === "number" ? extensions.retryAfter : undefined;
  const code = typeof extensions.code === "string" ? extensions.code : "INTERNAL_SERVER_ERROR";
  return new GraphqlError(code, String(error.message ?? "GraphQL error"), status, retryAfter);
}

export class Notifications {
  private readonly host: NotificationsHost;

  constructor(host: NotificationsHost) {
    this.host = host;
  }

  /** The caller's notifications, newest first. */
  async list(options: ListNotificationsOptions = {}): Promise<NotificationPage> {
    const data = await this.query(LIST_QUERY, {
      // Sent explicitly (with the schema's defaults) so no server has to apply argument defaults.
      first: options.first ?? 20,
      after: options.after ?? null,
      unreadOnly: options.unreadOnly ?? false,
    });
    const connection = isObject(data.notifications) ? data.notifications : {};
    const edges = Array.isArray(connection.edges) ? connection.edges : [];
    const pageInfo = isObject(connection.pageInfo) ? connection.pageInfo : {};
    return {
      items: edges.map((edge: unknown) => readNotification(isObject(edge) ? edge.node : undefined)),
      hasNextPage: pageInfo.hasNextPage === true,
      endCursor: typeof pageInfo.endCursor === "string" ? pageInfo.endCursor : null,
    };
  }

  async unreadCount(): Promise<number> {
    const data = await this.query("{unreadNotificationCount}");
    return Number(data.unreadNotificationCount);
  }

  /** Sets readAt once; later calls return the notification unchanged. */
  async markRead(id: string): Promise<Notification> {
    const data = await this.query(`mutation($id:ID!){markNotificationRead(id:$id){${NOTIFICATION_FIELDS}}}`, { id });
    return readNotification(data.markNotificationRead);
  }

  /** Resolves with how many changed. */
  async markAllRead(): Promise<number> {
    const data = await this.query("mutation{markAllNotificationsRead}");
    return Number(data.markAllNotificationsRead);
  }

  /** Resolves true; an unknown (or another user's) id rejects with GraphqlError NOT_FOUND. */
  async delete(id: string): Promise<boolean> {
    const data = await this.query("mutation($id:ID!){deleteNotification(id:$id)}", { id });
    return data.deleteNotification === true;
  }

  /** Live: called for every `notification.new` push on the socket. */
  onNew(handler: (notification: NotificationNewData, push: EventPush<"notification.new">) => void): Unsubscribe {
    return this.host.onEvent((push) => {
      if (push.event === "notification.new") {
        const typed = push as unknown as EventPush<"notification.new">;
        handler(typed.data, typed);
      }
    });
  }

  /** One POST; resolves with `data`, rejects with GraphqlError (or RealtimeError network). */
  private async query(query: string, variables: Record<string, unknown> = {}): Promise<Record<string, unknown>> {
    const url = this.host.graphqlUrl();
    const token = await this.host.getToken();
    let response: Awaited<ReturnType<FetchLike>>;
    try {
      response = await this.host.fetch(url, {
        method: "POST",
        headers: { "content-type": "application/json", authorization: `Bearer ${token}` },
        body: JSON.stringify({ query, variables }),
      });
    } catch (cause) {
      throw new RealtimeError("network", `GraphQL request to ${url} failed`, { cause });
    }
    const body: unknown = await response.json().catch(() => undefined);
    const graphqlError = firstGraphqlError(body, response.status);
    if (graphqlError) throw graphqlError;
    if (!response.ok || !isObject(body) || !isObject(body.data)) {
      throw new GraphqlError("HTTP_ERROR", `GraphQL answered HTTP ${response.status} without data`, response.status);
    }
    return body.data;
  }
}
