"""SES event bodies as AWS documents them (SES Developer Guide: "Examples of event data that
Amazon SES publishes to Amazon SNS" and "Amazon SNS notification examples"), with the message id,
address and tags swapped for the test's own."""

from __future__ import annotations

import copy
import json
from typing import Any


def _mail(message_id: str, address: str, tags: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {
        "timestamp": "2017-08-05T00:40:02.012Z",
        "source": "Sender Name <sender@example.com>",
        "sourceArn": "arn:aws:ses:us-east-1:123456789012:identity/sender@example.com",
        "sendingAccountId": "123456789012",
        "messageId": message_id,
        "destination": [address],
        "headersTruncated": False,
        "headers": [{"name": "From", "value": "Sender Name <sender@example.com>"},
                    {"name": "To", "value": address},
                    {"name": "Subject", "value": "Message sent from Amazon SES"}],
        "commonHeaders": {"from": ["Sender Name <sender@example.com>"], "to": [address],
                          "messageId": message_id, "subject": "Message sent from Amazon SES"},
        "tags": {"ses:configuration-set": ["ConfigSet"], "ses:source-ip": ["192.0.2.0"],
                 "ses:from-domain": ["example.com"], "ses:caller-identity": ["ses_user"], **(tags or {})},
    }


def bounce(message_id: str, address: str, *, bounce_type: str = "Permanent", sub_type: str = "General",
           feedback_id: str = "01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000000",
           tags: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {
        "eventType": "Bounce",
        "bounce": {
            "bounceType": bounce_type,
            "bounceSubType": sub_type,
            "bouncedRecipients": [{"emailAddress": address, "action": "failed", "status": "5.1.1",
                                   "diagnosticCode": "smtp; 550 5.1.1 user unknown"}],
            "timestamp": "2017-08-05T00:41:02.669Z",
            "feedbackId": feedback_id,
            "reportingMTA": "dsn; mta.example.com",
        },
        "mail": _mail(message_id, address, tags),
    }


def complaint(message_id: str, address: str, *, feedback_type: str = "abuse",
              tags: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {
        "eventType": "Complaint",
        "complaint": {
            "complainedRecipients": [{"emailAddress": address}],
            "timestamp": "2017-08-05T00:41:02.669Z",
            "feedbackId": "01000157c44f053b-61b59c11-9236-11e6-8f96-7be8aexample-000001",
            "userAgent": "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36",
            "complaintFeedbackType": feedback_type,
            "arrivalDate": "2017-08-05T00:41:02.669Z",
        },
        "mail": _mail(message_id, address, tags),
    }


def delivery(message_id: str, address: str, *, tags: dict[str, list[str]] | None = None) -> dict[str, Any]:
    return {
        "eventType": "Delivery",
        "mail": _mail(message_id, address, tags),
        "delivery": {
            "timestamp": "2016-10-19T23:21:04.133Z",
            "processingTimeMillis": 11893,
            "recipients": [address],
            "smtpResponse": "250 2.6.0 Message received",
            "reportingMTA": "mta.example.com",
        },
    }


def reject(message_id: str, address: str) -> dict[str, Any]:
    return {"eventType": "Reject", "mail": _mail(message_id, address), "reject": {"reason": "Bad content"}}


def rendering_failure(message_id: str, address: str) -> dict[str, Any]:
    return {"eventType": "Rendering Failure", "mail": _mail(message_id, address),
            "failure": {"errorMessage": "Attribute 'attributeName' is not present in the rendering data.",
                        "templateName": "MyTemplate"}}


def delivery_delay(message_id: str, address: str) -> dict[str, Any]:
    return {"eventType": "DeliveryDelay", "mail": _mail(message_id, address),
            "deliveryDelay": {"timestamp": "2020-06-16T00:15:40.641Z", "delayType": "TransientCommunicationFailure",
                              "expirationTime": "2020-06-16T00:25:40.914Z",
                              "delayedRecipients": [{"emailAddress": address, "status": "4.4.1",
                                                     "diagnosticCode": "smtp; 421 4.4.1 Unable to connect"}]}}


def subscription(message_id: str, address: str) -> dict[str, Any]:
    return {"eventType": "Subscription", "mail": _mail(message_id, address),
            "subscription": {"contactList": "ContactListName", "timestamp": "2022-01-12T01:00:17.910Z",
                             "source": "UnsubscribeHeader",
                             "newTopicPreferences": {"unsubscribeAll": True, "topicSubscriptionStatus": []},
                             "oldTopicPreferences": {"unsubscribeAll": False, "topicSubscriptionStatus": []}}}


def send(message_id: str, address: str) -> dict[str, Any]:
    return {"eventType": "Send", "mail": _mail(message_id, address), "send": {}}


def identity_notification(event: dict[str, Any]) -> dict[str, Any]:
    """The same event in the identity-notification shape (`notificationType`, no tags)."""
    doc = copy.deepcopy(event)
    doc["notificationType"] = doc.pop("eventType")
    doc["mail"].pop("tags", None)
    return doc


def sns_envelope(event: dict[str, Any], message_id: str = "22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324",
                 topic: str = "arn:aws:sns:us-east-1:123456789012:ses-events") -> dict[str, Any]:
    return {"Type": "Notification", "MessageId": message_id, "TopicArn": topic,
            "Message": json.dumps(event), "Timestamp": "2017-08-05T00:41:03.000Z", "SignatureVersion": "1",
            "Signature": "", "SigningCertURL": "", "UnsubscribeURL": ""}


def eventbridge(event: dict[str, Any]) -> dict[str, Any]:
    return {"version": "0", "id": "e1", "detail-type": "Email Bounced", "source": "aws.ses",
            "account": "123456789012", "time": "2017-08-05T00:41:03Z", "region": "us-east-1",
            "resources": [], "detail": event}
